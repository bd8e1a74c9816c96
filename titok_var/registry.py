"""Model families by name: `config.model_name` picks the task that builds, trains and evaluates it."""

from titok_var.tasks.maskgit import MaskGitTask
from titok_var.tasks.titok_stages import DecoderFinetuneTask, ProxyCodeTask
from titok_var.tasks.titok import TiTokTask
from titok_var.tasks.var import VarTask
from titok_var.tasks.var_vqvae import VarVQVAETask

TASKS = {
    "titok": TiTokTask,
    "titok_stage1": ProxyCodeTask,
    "titok_stage2": DecoderFinetuneTask,
    "maskgit": MaskGitTask,
    "var_vqvae": VarVQVAETask,
    "var": VarTask,
}


def get_task(config):
    name = config.model_name
    if name not in TASKS:
        raise ValueError(f"unknown model_name {name!r}; known: {sorted(TASKS)}")
    task_class = TASKS[name]
    # A family may pick a variant from the config (VAR: pre-tokenized shards or images).
    return task_class.for_config(config) if hasattr(task_class, "for_config") else task_class(config)
