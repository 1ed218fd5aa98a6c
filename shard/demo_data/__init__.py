"""Data shipped with the shard (a package so that wheels carry it): ``corpus.txt``, the English text the demo
tokenizer is trained on."""
