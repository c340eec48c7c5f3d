"""What the end-to-end benchmarks share: the code prompts (beginnings of Python source, the
shipped pair's training domain, the standard library) and the check that the pair is there."""

import os

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


def weights_available(weights_dir: str | None = None) -> bool:
    """Whether ``weights_dir`` (None: the shipped pair's directory) holds a (target, draft) pair."""
    from specdecode.decoder.generate import WEIGHTS_DIR

    directory = weights_dir or WEIGHTS_DIR
    return all(os.path.exists(os.path.join(directory, f"{model}.pt")) for model in ("target", "draft"))
