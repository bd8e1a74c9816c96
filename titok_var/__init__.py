"""titok_var: TiTok tokenizers and MaskGIT / VAR generators in JAX/Flax."""


def load_exported(export_dir: str, mesh=None):
    """(task, params, config) of a folder written by `main.py --mode export`."""
    from titok_var.tools.export import load_exported as _load

    return _load(export_dir, mesh)
