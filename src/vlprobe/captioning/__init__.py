"""Captioning: trained caption decoders on frozen image grids, decoding and caption metrics.

- :mod:`vlprobe.captioning.vocab`: the word vocabulary of the TRAIN captions (a transformers
  tokenizer saved with each checkpoint);
- :mod:`vlprobe.captioning.decoders`: the decoder interface and its kinds (``grid_transformer``
  now; a prefix decoder into a frozen LM fits the same interface, see there);
- :mod:`vlprobe.captioning.grid_decoder`: ``grid_transformer``, a small GPT-2 decoder that
  cross-attends to the grid cells;
- :mod:`vlprobe.captioning.decoding`: greedy / beam decoding of stored grid features, and
  the generation helpers the captioner adapters share;
- :mod:`vlprobe.captioning.metrics`: BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap; what
  happens without Java is documented there).

Training is ``vlprobe train`` with ``kind: captioner`` (:mod:`vlprobe.train.caption_run`);
the checkpoint loads as the ``grid_captioner`` adapter (:mod:`vlprobe.models.grid_captioner`).
Nothing here imports torch at import time except :mod:`~vlprobe.captioning.grid_decoder`.
"""
