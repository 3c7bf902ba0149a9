"""Prompt data: the :class:`Prompt` and :class:`PromptSet` types and the readers that fill them.

``load_prompts`` reads a file (split JSON, AdvBench / HarmBench / JailbreakBench /
StrongREJECT CSV, plain text, JSONL, JSON lists, parquet) or a named dataset
(``available_datasets()``) into a :class:`PromptSet`. Readers keep file order, strip
whitespace, deduplicate nothing and raise :class:`~steerscope.errors.DataError` with a
one-line message naming the file for bad input.
"""

from steerscope.data.formats import read_prompt_file
from steerscope.data.prompts import Prompt, PromptSet
from steerscope.data.readers import DATA_DIR_ENV, available_datasets, load_prompts

__all__ = [
    "DATA_DIR_ENV",
    "Prompt",
    "PromptSet",
    "available_datasets",
    "load_prompts",
    "read_prompt_file",
]
