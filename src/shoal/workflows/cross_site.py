"""Cross-site evaluation: every site's local model, and the global model,
evaluated at every site.

job.yml::

    workflow:
      name: cross_site_eval
      model_path: global_final.safetensors    # in app/; or server.model / initial_weights
    client:
      script: train.py                         # answers submit_model and validate

Each site is first asked for its own local model (task ``submit_model``,
which carries the global model as a starting point for a site that keeps
none), then each model in turn, the global one first, goes to every site
as a ``validate`` task (``shoal.workflows.evaluation``). The result is a
matrix, model x evaluating site -> metrics, in ``run/cross_site_eval.json``
(``shoal.evalmatrix``), rewritten after each model, shown by ``show_stats``.
A training job gets the same phase after its last round with
``evaluate_after: true`` (``RoundParams``).

Fewer than ``min_clients`` sites evaluating the global model fail the job;
a site whose model did not arrive has no row, a missing cell says why.
"""

from __future__ import annotations

import functools

from shoal.arrays import save_arrays
from shoal.workflows.api import WorkflowContext
from shoal.workflows.evaluate import MODEL_FILE, given_model, model_source_check
from shoal.workflows.evaluate import parse_params as _parse_evaluate
from shoal.workflows.evaluation import cross_site_phase, sites_taking_part

__all__ = ["check_spec", "parse_params", "run"]

#: Raw ``workflow:`` params -> ``EvaluateParams`` (the same as ``evaluate``'s).
parse_params = functools.partial(_parse_evaluate, workflow="cross_site_eval")

#: The model is given (``model_path``, ``server.model`` or ``server.initial_weights``).
check_spec = model_source_check("cross_site_eval")


def run(ctx: WorkflowContext) -> None:
    """Run the cross-site evaluation of the given model; see the module docstring."""
    p = parse_params(ctx.params)
    try:
        sites_taking_part(ctx)
        params, source = given_model(ctx, p.model_path, workflow="cross_site_eval")
        model = save_arrays(ctx.run_dir / "models" / MODEL_FILE, params)
        del params
        cross_site_phase(ctx, global_model=model, source=source, round=0, limits=p.limits)
    finally:
        ctx.comm.finish()
