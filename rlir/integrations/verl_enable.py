"""Importing this module turns rlir's kernels on in verl (:func:`rlir.integrations.verl.patch_verl`).

verl imports the modules named in its model config in every worker that builds one, before the engine, so one
line of a verl run turns the kernels on in all of its processes:

    actor_rollout_ref.model.external_lib=rlir.integrations.verl_enable
"""
from rlir.integrations.verl import patch_verl

PATCH = patch_verl()
