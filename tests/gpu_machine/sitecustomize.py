"""Put on PYTHONPATH, this makes the packages a GPU machine here lacks unimportable (as if not installed):
tests/test_gpu_check.py runs the GPU check's path under it, so a new import of one of them on that path fails."""

import importlib.machinery

ABSENT = {"datasets", "pyarrow", "pandas", "ray", "wandb", "vllm", "av"}
_find_spec = importlib.machinery.PathFinder.find_spec.__func__


def _find_spec_unless_absent(cls, name, path=None, target=None):
    if name.partition(".")[0] in ABSENT:
        return None
    return _find_spec(cls, name, path, target)


importlib.machinery.PathFinder.find_spec = classmethod(_find_spec_unless_absent)
