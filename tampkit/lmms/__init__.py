"""lmms-eval integration (optional extra `lmms`): our model class and offline local tasks.

`python -m lmms_eval --model tampkit --model_args pretrained=DIR --tasks tamp_image_qa
--include_path "$(python -m tampkit.lmms.tasks)"` evaluates a pruned checkpoint (or any alias) with
lmms-eval; the hub tasks (gqa, textvqa_val, mme, pope, scienceqa_img, mmmu_val, video ones) work
the same way where the hub is reachable. The model is registered through the `lmms_eval.models`
entry point (see pyproject.toml and `manifest`), so lmms-eval finds it without patches.

Nothing here imports lmms-eval at import time: lmms-eval imports this package while it loads its
own model registry.
"""
