"""The official Dream Engine release, read and rewritten for :mod:`tools.convert_official`:

* :mod:`.reader` — where the release's files are (index, shards, ``config.json``) and their
  tensors, one shard open at a time (the only code of this repository that opens pickles);
* :mod:`.plan` — the key plan: a table of the release's key families → the file each goes
  to, what is refused, what stays in float32;
* :mod:`.dit_lora` — the DiT as a LoRA for stock SD3.5 Large (compared with the base);
* :mod:`.writers` — the files: the LMM folder, the adapter, the DiT (merged or LoRA form)
  and the key table.
"""


class ConversionError(ValueError):
    """The release holds keys no rule maps, or is incomplete, or the request cannot be met."""
