"""All prompt wording in one place: stage-1 text prompts, stage-3 prompts with ID tokens, item prompts.

Literal texts follow the official SeLLa code for ML-1M (METHOD.md §2.1, §5.2); other datasets substitute their item
word the way the official Book scripts do. Chat rendering uses the backbone's own chat template where it has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "ID_TOKENS", "TOKEN_ORDER", "ItemWords", "Prompt", "item_words", "history_titles", "stage1_prompt",
    "stage3_prompt", "item_prompt", "render_chat", "CHATML_FALLBACK", "tiny_corpus",
]

# The three ID tokens of SeLLa-Rec, keyed by the names used in ``stage3.tokens``.
ID_TOKENS = {"user": "<User_ID>", "item": "<Item_ID>", "warm": "<Warm_ID>"}
TOKEN_ORDER = ("user", "item", "warm")
ANSWERS = {1: "Yes.", 0: "No."}
CHATML_FALLBACK = "<|im_start|>{role}\n{content}<|im_end|>\n"


@dataclass(frozen=True)
class ItemWords:
    """How prompts name items. Casing quirks ('TargetMovie' in stage 1, 'Targetmovie' in stage 3) are official."""

    noun: str          # movie
    plural: str        # movies

    @property
    def title_case(self) -> str:
        return self.noun[:1].upper() + self.noun[1:]


@dataclass(frozen=True)
class Prompt:
    """One conversation: system text, user text and the answer ('Yes.' / 'No.', '' at inference)."""

    system: str
    user: str
    answer: str


class ChatTokenizer(Protocol):
    chat_template: Any

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> Any: ...


def item_words(noun: str) -> ItemWords:
    """Item words for a noun ('movie' -> movies, 'book' -> books)."""
    return ItemWords(noun=noun, plural=noun if noun.endswith("s") else noun + "s")


def history_titles(history: Sequence[int], titles: Sequence[str], history_len: int, placeholder: bool) -> list[str]:
    """Titles of a row's history, oldest first.

    With ``placeholder`` the official '' entry leads the list whenever the user has fewer than ``history_len``
    earlier positives (METHOD.md §1.3, gap #12), i.e. the list is ``([''] + positives)[-history_len:]``.
    """
    names = [titles[i] for i in history][-history_len:]
    if placeholder and len(names) < history_len:
        names = [""] + names
    return names


def _answer(label: int | None) -> str:
    return "" if label is None else ANSWERS[int(label)]


def stage1_prompt(words: ItemWords, history: list[str], target: str, label: int | None) -> Prompt:
    """Text-only Yes/No prompt of stage 1 (TALLRec-style; METHOD.md §2.1)."""
    system = (f"A user has given high ratings to the following {words.plural}. Given the {words.noun} list and a "
              f"target {words.noun}'s title. Please identify whether the user will like the target {words.noun} by "
              "answering 'Yes.' or 'No.'")
    list_name = f"{words.title_case}List"
    target_name = f"Target{words.title_case}" if words.noun == "movie" else f"Target{words.noun}"
    user = f"{list_name}: {history!r}, {target_name}: {target}"
    return Prompt(system, user, _answer(label))


def stage3_prompt(words: ItemWords, history: list[str], target: str, label: int | None,
                  tokens: Sequence[str]) -> Prompt:
    """Stage-3 prompt with the ID tokens in ``tokens`` (METHOD.md §5.2); the feature phrases follow the subset.

    With every token the text is the official one: ``... The user's feature is <User_ID>. The target movie's
    feature is <Item_ID>, <Warm_ID>. Targetmovie: ...``. Each chosen token appears exactly once.
    """
    unknown = set(tokens) - set(ID_TOKENS)
    if unknown:
        raise ValueError(f"unknown ID token(s) {sorted(unknown)}")  # config validation makes this unreachable
    given = [f"the {words.noun}list"]
    if "user" in tokens:
        given.append("the user's feature")
    if "item" in tokens or "warm" in tokens:
        given.append(f"a target {words.noun}'s feature")
    given_text = ", ".join(given[:-1]) + " and " + given[-1] if len(given) > 1 else given[0]
    system = (f"A user has given high ratings to the following {words.plural}. Given {given_text} and Title. "
              f"Please Use all available information to identify whether the user will like the target "
              f"{words.noun} by answering 'Yes.' or 'No.'")
    parts = [f"The {words.title_case}List: {history!r}."]
    if "user" in tokens:
        parts.append(f"The user's feature is {ID_TOKENS['user']}.")
    item_tokens = [ID_TOKENS[t] for t in ("item", "warm") if t in tokens]
    if item_tokens:
        parts.append(f"The target {words.noun}'s feature is {', '.join(item_tokens)}.")
    parts.append(f"Target{words.noun}: {target}.")
    return Prompt(system, " ".join(parts), _answer(label))


def item_prompt(template: str, words: ItemWords, title: str) -> str:
    """Stage-2a distillation text, e.g. ``Movie: Toy Story (1995)`` (no chat template; METHOD.md §3)."""
    return template.format(word=words.title_case, title=title)


def render_chat(tokenizer: ChatTokenizer | None, prompt: Prompt) -> tuple[str, str]:
    """Render a prompt as ``(prefix, answer)`` text.

    ``prefix`` ends right after the assistant header, so the answer's first token sits at a known position
    (the structural answer position of METHOD.md §6.1); ``answer`` is the answer plus the end-of-turn marker
    and no trailing newline (official). Tokenizers without a chat template get ChatML.
    """
    messages = [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}]
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        prefix = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        prefix = "".join(CHATML_FALLBACK.format(**m) for m in messages) + "<|im_start|>assistant\n"
    answer = f"{prompt.answer}<|im_end|>" if prompt.answer else ""
    return prefix, answer


def tiny_corpus(titles: Sequence[str], noun: str) -> list[str]:
    """Texts a locally trained tokenizer (the ``tiny`` backbone) learns from: titles and every prompt's wording."""
    words = item_words(noun)
    fixed = [stage1_prompt(words, ["a"], "b", 1), stage3_prompt(words, ["a"], "b", 0, TOKEN_ORDER)]
    return [t for t in titles if t] + [p.system + " " + p.user for p in fixed] + ["Movie: Book: Item:"]
