"""Models: the LLM backbone, the collaborative model and the projectors. Import from the submodules."""
