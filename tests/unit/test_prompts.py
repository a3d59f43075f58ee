"""Prompt wording: the official literal texts, token subsets, placeholder rule, chat rendering."""

from __future__ import annotations

import pytest

from sellarec.data.prompts import (ID_TOKENS, Prompt, history_titles, item_prompt, item_words, render_chat,
                                   stage1_prompt, stage3_prompt)

MOVIE = item_words("movie")


def test_stage1_prompt_is_the_official_text() -> None:
    p = stage1_prompt(MOVIE, ["", "Heat (1995)", "Schindler's List (1993)"], "Casino (1995)", 1)
    assert p.system == ("A user has given high ratings to the following movies. Given the movie list and a target "
                        "movie's title. Please identify whether the user will like the target movie by answering "
                        "'Yes.' or 'No.'")
    assert p.user == "MovieList: ['', 'Heat (1995)', \"Schindler's List (1993)\"], TargetMovie: Casino (1995)"
    assert p.answer == "Yes."
    assert stage1_prompt(MOVIE, [], "X", 0).answer == "No."
    assert stage1_prompt(MOVIE, [], "X", None).answer == ""


def test_stage1_book_words() -> None:
    p = stage1_prompt(item_words("book"), ["A"], "B", 0)
    assert "following books. Given the book list and a target book's title" in p.system
    assert p.user == "BookList: ['A'], Targetbook: B"


def test_stage3_prompt_with_all_tokens_is_the_official_text() -> None:
    p = stage3_prompt(MOVIE, ["Heat (1995)"], "Casino (1995)", 0, ("user", "item", "warm"))
    assert p.system == ("A user has given high ratings to the following movies. Given the movielist, the user's "
                        "feature and a target movie's feature and Title. Please Use all available information to "
                        "identify whether the user will like the target movie by answering 'Yes.' or 'No.'")
    assert p.user == ("The MovieList: ['Heat (1995)']. The user's feature is <User_ID>. The target movie's feature "
                      "is <Item_ID>, <Warm_ID>. Targetmovie: Casino (1995).")


@pytest.mark.parametrize("tokens", [(), ("user",), ("item",), ("warm",), ("user", "item"), ("item", "warm"),
                                    ("user", "warm"), ("user", "item", "warm")])
def test_each_chosen_token_appears_exactly_once(tokens: tuple[str, ...]) -> None:
    p = stage3_prompt(MOVIE, ["A", "B"], "C", 1, tokens)
    for name, token in ID_TOKENS.items():
        assert p.user.count(token) == (1 if name in tokens else 0)
    assert ("the user's feature" in p.system) == ("user" in tokens)
    assert ("target movie's feature" in p.system) == bool({"item", "warm"} & set(tokens))


def test_history_placeholder_rule() -> None:
    titles = ["", "A", "B", "C"]
    assert history_titles([1, 2], titles, history_len=3, placeholder=True) == ["", "A", "B"]
    assert history_titles([1, 2, 3], titles, history_len=3, placeholder=True) == ["A", "B", "C"]
    assert history_titles([1, 2], titles, history_len=3, placeholder=False) == ["A", "B"]
    assert history_titles([1, 2, 3], titles, history_len=2, placeholder=True) == ["B", "C"]


def test_item_prompt() -> None:
    assert item_prompt("{word}: {title}", MOVIE, "Heat (1995)") == "Movie: Heat (1995)"


def test_render_chat_fallback_is_chatml_and_answer_has_no_trailing_newline() -> None:
    prefix, answer = render_chat(None, Prompt("S", "U", "Yes."))
    assert prefix == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    assert answer == "Yes.<|im_end|>"
    assert render_chat(None, Prompt("S", "U", ""))[1] == ""
