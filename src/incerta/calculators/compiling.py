"""``incerta compile``: a model folder's potential as a compiled package the calculator picks up."""

from __future__ import annotations

from pathlib import Path

from incerta.models.compiled import CompileError, compile_potential, compiled_path
from incerta.models.predict import model_dtype
from incerta.train.checkpoint import load_potential, model_file
from incerta.uq.store import has_uncertainty, load_uncertain_potential


def compile_model(model: str | Path, out: str | Path | None = None, device: str = "cpu",
                  stress: bool | None = None, parallel_kernels: bool = False) -> Path:
    """Compile the potential the calculator predicts with (the attached uncertainty method's, and
    the calibrated uncertainties where they follow from the potential's outputs, e.g. GMM's, or
    the method's whole prediction where it compiles, LNK's GP readout) for ``device`` into ``out``,
    by default the model folder's package, which
    :class:`~incerta.calculators.ase.IncertaCalculator`, ``incerta md`` and active learning then
    use. ``stress`` (default: whether the model was trained on periodic data) adds the stress;
    ``parallel_kernels``: OpenMP-parallel CPU kernels (large cells on many cores).
    Raises :class:`~incerta.models.compiled.CompileError` when the model cannot be compiled."""
    scorer = scorer_digest = predictor = None
    if has_uncertainty(model):
        uncertain = load_uncertain_potential(model).to(device)
        method = uncertain.method
        if not (method.predicts_with_potential or method.compiles_predictions):
            raise CompileError(f"the '{method.name}' uncertainty method predicts with more than one "
                               "potential (members or heads); only single potentials compile")
        potential = uncertain.potential
        if method.compiles_predictions:
            predictor = method.output_predictions
        if method.scores_from_outputs or method.compiles_predictions:
            scorer, scorer_digest = uncertain.output_uncertainties, uncertain.fingerprint()
    else:
        potential = load_potential(model)
    target = compiled_path(model_file(model).parent, device, model_dtype(potential)) if out is None else Path(out)
    with_stress = bool(potential.spec.trained_on_periodic) if stress is None else stress
    return compile_potential(potential, target, device, with_stress, scorer, scorer_digest, predictor,
                             parallel_kernels)
