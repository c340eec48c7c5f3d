"""The code prompts the end-to-end benchmarks share: beginnings of Python source, the shipped
pair's training domain (the standard library)."""

PROMPTS = [
    "import os\nimport sys\n\n\ndef main():\n",
    "class Queue:\n    def __init__(self, maxsize=0):\n",
    "    def __repr__(self):\n        return ",
    "def _check_arg(name, value):\n    if not isinstance(value, str):\n",
    "    for i in range(len(",
    '"""Utilities for working with ',
    "        except KeyError:\n",
    "from collections import namedtuple\n\n",
]
