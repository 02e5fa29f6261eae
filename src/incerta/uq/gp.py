"""Sparse variational Gaussian process on atomic latent features (deep kernel learning).

Each atom's standardised latent features h_i enter a GP f(h_i) ~ GP(0, s^2 RBF(l)) giving
an atomic-energy distribution N(mu_i, sigma_i^2); a structure's energy distribution is
N(sum_i mu_i, 1^T Sigma_b 1) (annex 5.2.4 of the report). Per-atom score: sigma_i (eV);
energy score: sqrt(1^T Sigma_b 1) (eV).

Two modes:

* ``svgp`` (the report's DKL): frozen backbone; the GP is fitted to the network's own
  atomic energies, so its posterior variance measures how far an environment is from
  the training environments; energies and forces are the network's.
* ``lnk`` (localised neural kernel, Wollschläger et al. 2023): the GP replaces the
  energy readout and is trained jointly with the backbone on reference energies (with
  their GP variance) and forces (gradient of the GP mean); its variational posterior is
  then refitted on the training atoms as in ``svgp``.

Why the report's GP barely reacted to temperature, and what is done here: (1) with the
GP fitted to sums of atomic energies (or to small residuals), the data say little about
individual atoms, and the KL term keeps the variational covariance at its prior: the
posterior variance equals the prior variance everywhere (we reproduced this: identical
mean uncertainty at 300 and 600 K, negative rank correlation). Fitting the variational
posterior to per-atom targets on every training atom makes it contract where training
environments are and stay wide elsewhere. (2) An RBF kernel on raw features is dominated
by a few large-variance dimensions: features are standardised with training statistics.
(3) Inducing points start at k-means centres of the training atoms (every environment
covered), and the lengthscale is bounded by the median distance between atoms, so it
cannot grow until all atoms look alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import gpytorch
import numpy as np
import torch
from scipy.spatial.distance import pdist
from sklearn.cluster import MiniBatchKMeans
from tqdm.auto import tqdm

from incerta.data import keys as K
from incerta.data.graph import AtomicGraph, batches
from incerta.models.derivatives import derivatives, differentiable_inputs
from incerta.models.potential import Potential
from incerta.nn.electronic import segment_sum
from incerta.uq.base import FitSettings, UncertainOutput, UncertaintyMethod, frozen
from incerta.uq.finetune import train_module

#: kernel entries evaluated at once for the per-structure sums of a large cell (2^22: 32 MB in float64)
KERNEL_BLOCK = 2**22


class AtomGP(gpytorch.models.ApproximateGP):
    """SVGP with a constant mean and an RBF kernel on (M, D) inducing points."""

    def __init__(self, inducing: torch.Tensor, lengthscale_bounds: tuple[float, float]) -> None:
        distribution = gpytorch.variational.CholeskyVariationalDistribution(inducing.shape[0])
        strategy = gpytorch.variational.VariationalStrategy(self, inducing, distribution, learn_inducing_locations=True)
        super().__init__(strategy)
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(
            gpytorch.kernels.RBFKernel(lengthscale_constraint=gpytorch.constraints.Interval(*lengthscale_bounds))
        )

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


class SVGPUncertainty(UncertaintyMethod):
    """Deep kernel learning on a frozen backbone (see module docstring)."""

    name = "svgp"

    def __init__(self, potential: Potential, num_inducing: int = 1000, lengthscale_bounds: tuple[float, float] = (0.1, 5.0),
                 gp_epochs: int = 40, forces_weight: float = 1.0) -> None:
        super().__init__(potential if self.modifies_potential else frozen(potential))
        dim = potential.spec.num_channels
        self.num_inducing, self.gp_epochs, self.forces_weight = num_inducing, gp_epochs, forces_weight
        self.lengthscale_bounds = tuple(float(b) for b in lengthscale_bounds)
        self.register_buffer("center", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("spread", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("energy_scale", torch.ones((), dtype=torch.float64))
        self.gp = AtomGP(torch.zeros(num_inducing, dim, dtype=torch.float64), self.lengthscale_bounds).double()
        self.log_noise = torch.nn.Parameter(torch.tensor(math.log(1e-4), dtype=torch.float64))
        self.n_train = 1

    def options(self) -> dict:
        return {"num_inducing": self.num_inducing, "lengthscale_bounds": list(self.lengthscale_bounds),
                "gp_epochs": self.gp_epochs, "forces_weight": self.forces_weight}

    def _posterior(self, features: torch.Tensor, graph: AtomicGraph) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Atomic-energy mean (N,) and std (N,) in eV, and std of their sum per structure (B,)."""
        z = (features.double() - self.center) / self.spread
        if self.gp.training:
            posterior = self.gp(z)
            mean, covariance = posterior.mean, posterior.lazy_covariance_matrix.to_dense()
            summation = torch.nn.functional.one_hot(graph.batch, graph.num_graphs).double().T  # (B, N)
            structure_var = ((summation @ covariance) * summation).sum(1)
            atom_var = torch.diagonal(covariance)
        else:
            mean, atom_var, structure_var = self._fixed_posterior(z, graph.batch, graph.num_graphs)
        scale = self.energy_scale
        return mean * scale, (atom_var * scale**2).clamp_min(1e-20).sqrt(), (structure_var * scale**2).clamp_min(1e-20).sqrt()

    def _rbf(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(N, D), (M, D) -> (N, M): the GP's scaled RBF kernel, written out. Through GPyTorch's
        kernel call (a lazy operator made dense) predictions cost 1.19x the bare model for
        LNK and 1.34x for SVGP, against 1.14x and 1.29x this way (acac, one thread)."""
        kernel = self.gp.covar_module
        lengthscale = kernel.base_kernel.lengthscale.reshape(-1)
        a, b = a / lengthscale, b / lengthscale
        squared = (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2 * a @ b.T).clamp_min(0)  # no sqrt: finite gradients
        return kernel.outputscale * torch.exp(-0.5 * squared)

    def _fixed_posterior(self, z: torch.Tensor, batch: torch.Tensor,
                         num_graphs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """GPyTorch's whitened SVGP prediction for a GP that is not being trained, for N atoms of
        B structures: mean (N,), variance (N,) and variance of the per-structure sums (B,) of
        cov = K_zz + jitter I + K_zu B K_uz, with mean = c + K_zu a, a = L^-T m and
        B = L^-T (S - I) L^-1 (K_uu = L L^T) kept until a parameter changes. The sums read
        sum_ij K_zz,ij over pairs in one structure + jitter n_b + s_b^T B s_b (s_b the sum of the
        structure's K_zu rows), so no (N, N) covariance is formed beyond the kernel itself (and the
        prediction compiles for any N and B). Measured on acac (15 atoms): a prediction with the
        GP costs 1.5-1.7x the bare model through GPyTorch's predictive distribution, which
        rebuilds the (M + N)^2 joint covariance on every call."""
        strategy = self.gp.variational_strategy
        state = [t._version for t in (*self.gp.parameters(), *self.gp.buffers())]  # bumped by in-place updates
        if getattr(self, "_cache_state", None) != state:
            with torch.no_grad():
                inducing = strategy.inducing_points.clone()
                eye = torch.eye(len(inducing), dtype=inducing.dtype, device=inducing.device)
                cholesky = torch.linalg.cholesky(self._rbf(inducing, inducing) + strategy.jitter_val * eye)
                inverse = torch.linalg.solve_triangular(cholesky, eye, upper=False)
                q = strategy.variational_distribution  # N(m, S) of the whitened inducing values
                self._cache = (inducing, inverse.T @ q.mean, inverse.T @ (q.covariance_matrix - eye) @ inverse)
            self._cache_state = state
        inducing, weights, correction = self._cache
        cross = self._rbf(z, inducing)
        with torch.no_grad():  # predictions detach the uncertainty: no graph for it
            jitter = strategy.jitter_val
            atom_var = self.gp.covar_module.outputscale + jitter + ((cross @ correction) * cross).sum(1)
            pairs = self._same_structure_sums(z, batch) + jitter
            summed = segment_sum(cross, batch, num_graphs)
            structure_var = segment_sum(pairs, batch, num_graphs) + ((summed @ correction) * summed).sum(1)
        return self.gp.mean_module.constant + cross @ weights, atom_var, structure_var

    def _same_structure_sums(self, z: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """sum_j k(z_i, z_j) over the atoms j of atom i's structure, (N,), for standardised features
        z (N, D). Eagerly the kernel is evaluated for blocks of atoms (:data:`KERNEL_BLOCK` entries
        at a time), so a large cell never holds its (N, N) kernel: for one structure (D = 8, 2
        threads; ``benchmarks/gp_kernel_sums.py``) of 10,000 atoms the whole kernel took 2.4 GB and
        5.0 s, the blocks 0.12 GB and 2.8 s; of 20,000 atoms 9.6 GB and 36 s against 0.13 GB and
        12 s. A traced program (symbolic N) evaluates it whole."""
        def block(rows: slice) -> torch.Tensor:
            return (self._rbf(z[rows], z) * (batch[rows, None] == batch)).sum(1)

        count = z.shape[0]
        if not isinstance(count, int) or count * count <= KERNEL_BLOCK:
            return block(slice(None))
        step = max(1, KERNEL_BLOCK // count)
        return torch.cat([block(slice(start, start + step)) for start in range(0, count, step)])

    def _predict(self, graph: AtomicGraph, forces: bool, compute_stress: bool, create_graph: bool,
                 species: torch.Tensor | None = None):
        """(energy (B,), atomic energies (N,), atom std (N,), structure std (B,), derivatives, the
        potential's outputs); ``species`` (N,): the graph's checked species indices, if known."""
        inputs = differentiable_inputs(graph, forces=forces, stress=compute_stress)
        out = self.potential.evaluate(inputs.graph, species)
        gp_mean, atom_std, structure_std = self._posterior(out[K.NODE_FEATURES], graph)
        if self.modifies_potential:  # the GP is the readout: E_i = mu_i + species shift
            species = self.potential.species_index(graph.numbers) if species is None else species
            atomic = gp_mean.to(out[K.ENERGY].dtype) + self.potential.scale_shift.shift[species]
            energy = segment_sum(atomic, graph.batch, graph.num_graphs)
        else:
            atomic, energy = out[K.ATOMIC_ENERGIES], out[K.ENERGY]
        return energy, atomic, atom_std, structure_std, derivatives(energy, inputs, create_graph), out

    def joint_loss(self, batch: AtomicGraph) -> torch.Tensor:
        """LNK training: energy likelihood with the GP variance, plus forces of the GP mean."""
        energy, _, _, structure_std, grads, _ = self._predict(batch, True, False, create_graph=self.training)
        variance = structure_std.pow(2) + self.log_noise.exp()
        nll = 0.5 * (torch.log(2 * math.pi * variance) + (batch.energy.double() - energy.double()).pow(2) / variance)
        force_mse = (grads[K.FORCES] - batch.forces).pow(2).mean()
        kl = self.gp.variational_strategy.kl_divergence() / self.n_train
        return nll.mean() + kl + self.forces_weight * 1.5 * batch.num_atoms.double().mean() * torch.log(force_mse)

    def _atom_data(self, graphs: Sequence[AtomicGraph], from_gp: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (atoms, C) and atomic-energy targets (atoms,) in energy_scale units: the
        GP's own mean (``from_gp``) or the network's atomic energies without species shift."""
        features, targets = [], []
        with torch.no_grad():
            for batch in batches(graphs, 32):
                out = self.potential.evaluate(batch)
                features.append(out[K.NODE_FEATURES].double())
                if from_gp:
                    z = (out[K.NODE_FEATURES].double() - self.center) / self.spread
                    targets.append(self.gp(z).mean)
                else:
                    species = self.potential.species_index(batch.numbers)
                    targets.append((out[K.ATOMIC_ENERGIES] - self.potential.scale_shift.shift[species]).double() / self.energy_scale)
        return torch.cat(features), torch.cat(targets)

    def _initialise(self, graphs: Sequence[AtomicGraph], seed: int) -> dict:
        self.energy_scale = self.potential.scale_shift.scale.detach().double().clone()
        features, _ = self._atom_data(graphs, from_gp=False)
        self.center, self.spread = features.mean(0), features.std(0) + 1e-6
        z = ((features - self.center) / self.spread).cpu().numpy()
        count = min(self.num_inducing, max(len(z) // 4, 1))
        centres = MiniBatchKMeans(count, random_state=seed, n_init=3).fit(z).cluster_centers_
        sample = z[np.random.default_rng(seed).choice(len(z), size=min(len(z), 1000), replace=False)]
        median = float(np.median(pdist(sample)))
        self.lengthscale_bounds = (0.05 * median, median)
        self.num_inducing = count
        self.gp = AtomGP(torch.as_tensor(centres), self.lengthscale_bounds).double()
        self.gp.covar_module.base_kernel.lengthscale = 0.3 * median
        return {"inducing_points": count, "median_distance": median, "atoms": len(z)}

    def _fit_variational(self, graphs: Sequence[AtomicGraph], seed: int, progress: bool, from_gp: bool) -> dict:
        """Fit the GP to per-atom targets with the predictive log-likelihood (GPyTorch)."""
        features, targets = self._atom_data(graphs, from_gp)
        z = (features - self.center) / self.spread
        likelihood = gpytorch.likelihoods.GaussianLikelihood(
            noise_constraint=gpytorch.constraints.GreaterThan(1e-10)).double()
        likelihood.noise = 1e-3 * float(targets.var()) + 1e-8
        objective = gpytorch.mlls.PredictiveLogLikelihood(likelihood, self.gp, num_data=len(z))
        parameters = list(self.gp.parameters()) + list(likelihood.parameters())
        optimizer = torch.optim.Adam(parameters, lr=0.01)
        generator = torch.Generator().manual_seed(seed)
        self.gp.train()
        likelihood.train()
        for _ in tqdm(range(self.gp_epochs), desc=f"{self.name} variational fit", disable=not progress, mininterval=1.0):
            for index in torch.randperm(len(z), generator=generator).split(512):
                optimizer.zero_grad(set_to_none=True)
                loss = -objective(self.gp(z[index]), targets[index])
                loss.backward()
                optimizer.step()
        self.gp.eval()
        kernel = self.gp.covar_module
        return {"lengthscale": float(kernel.base_kernel.lengthscale.detach().mean()),
                "outputscale": float(kernel.outputscale.detach()),
                "noise": float(likelihood.noise.detach()), "final_pll": -float(loss.detach())}

    def fit(self, train: Sequence[AtomicGraph], validation: Sequence[AtomicGraph], settings: FitSettings) -> dict:
        torch.manual_seed(settings.seed)
        info = self._initialise(train, settings.seed)
        if self.modifies_potential:
            self.n_train = len(train)
            self._fit_variational(train, settings.seed, settings.progress, from_gp=False)  # readout starts as the network
            info["joint"] = train_module(self, self.joint_loss, train, validation, settings.epochs, settings.lr,
                                         settings.batch_size, settings.seed, settings.progress, "lnk joint training")
            frozen(self.potential)
        info.update(self._fit_variational(train, settings.seed, settings.progress, from_gp=self.modifies_potential))
        return info

    def forward(self, graph: AtomicGraph, compute_stress: bool = False) -> UncertainOutput:
        energy, atomic, atom_std, structure_std, grads, out = self._predict(graph, True, compute_stress,
                                                                            create_graph=False)
        return UncertainOutput(energy.detach(), grads[K.FORCES], atom_std.detach(), structure_std.detach(),
                               grads.get(K.STRESS), atomic.detach(), out[K.NODE_FEATURES])


class LNKUncertainty(SVGPUncertainty):
    """Localised neural kernel: GP readout trained jointly with the backbone.

    Fewer inducing points by default than ``svgp``: every joint training step factorises
    the (M, M) inducing covariance and differentiates through it twice (forces in the
    loss). Measured on acac, batches of 5, one thread: 1.03 s per step with M = 1000,
    0.10 s with M = 256.
    """

    name = "lnk"
    predicts_with_potential = False
    modifies_potential = True
    compiles_predictions = True

    def __init__(self, potential: Potential, num_inducing: int = 256, **options) -> None:
        super().__init__(potential, num_inducing=num_inducing, **options)

    def output_predictions(self, graph: AtomicGraph, compute_stress: bool, species: torch.Tensor) -> dict[str, torch.Tensor]:
        energy, atomic, atom_std, structure_std, grads, out = self._predict(graph, True, compute_stress,
                                                                            create_graph=False, species=species)
        return {K.ENERGY: energy.detach(), K.ATOMIC_ENERGIES: atomic.detach(), **grads,
                K.NODE_FEATURES: out[K.NODE_FEATURES], K.ATOM_SCORE: atom_std, K.ENERGY_SCORE: structure_std}
