"""Tiny registries, one per kind of component, filled lazily.

Built-in entries are registered as ``"module:attr"`` strings with a one-line summary so that
`privlab list` and scenario validation never import torch. Third-party components plug in
through entry points (groups ``privlab.datasets``, ``privlab.models``, ``privlab.topologies``,
``privlab.attacks``, ``privlab.defenses``), as Opacus registers its accountants.
"""

from __future__ import annotations

import difflib
import functools
import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from privlab.errors import ScenarioError


@dataclass(frozen=True)
class Entry:
    name: str
    target: Any  # "module:attr" or the object itself
    summary: str
    plugin: str | None = None
    """The entry-point group of a third-party component (None: built in)."""

    def load(self, field: str | None = None) -> Any:
        if not isinstance(self.target, str):
            return self.target
        module, _, attr = self.target.partition(":")
        if self.plugin is None:  # built in: a failure here is privlab's bug (exit 3)
            return getattr(importlib.import_module(module), attr)
        try:  # a plugin that fails to load is the user's configuration (exit 2)
            return functools.reduce(getattr, attr.split("."), importlib.import_module(module))
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise ScenarioError(
                f"{field or self.name}: plugin '{self.name}' (entry point '{self.target}' in "
                f"group {self.plugin}) failed to load: {type(exc).__name__}: {first}"
            ) from None


def plugin_summary(target: str) -> str:
    """A plug-in's own one-line summary: its `summary` attribute or first docstring line."""
    try:
        obj = Entry("", target, "", plugin="?").load()
    except Exception as exc:  # a broken plug-in must not break `privlab list`
        return f"(plugin {target}: cannot load: {type(exc).__name__}: {exc})"
    text = getattr(obj, "summary", None)
    if not isinstance(text, str) or not text.strip():
        text = (getattr(obj, "__doc__", None) or "").strip()
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{first} (plugin {target})" if first else f"(plugin {target})"


class Registry:
    """Name -> component for one kind (dataset, model, topology, attack, defense)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._plugins_loaded = False

    def register(self, name: str, target: Any, summary: str = "") -> None:
        if not summary and not isinstance(target, str):
            summary = (target.__doc__ or "").strip().splitlines()[0] if target.__doc__ else ""
        self._entries[name] = Entry(name, target, summary)

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=f"privlab.{self.kind}s"):
            if ep.name not in self._entries:
                self._entries[ep.name] = Entry(
                    ep.name, ep.value, f"(plugin {ep.value})", plugin=ep.group
                )

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        """Every entry; a plug-in's summary is its own (imported only here, for listing)."""
        out = []
        for n in self.names():
            e = self._entries[n]
            if e.plugin is not None and isinstance(e.target, str):
                e = Entry(e.name, e.target, plugin_summary(e.target), plugin=e.plugin)
            out.append(e)
        return out

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name in self._entries

    def check(self, name: str, field: str) -> None:
        """Raise a one-line ScenarioError naming the field, the value and the closest match."""
        if name in self:
            return
        close = difflib.get_close_matches(name, self.names(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ScenarioError(
            f"{field}: unknown {self.kind} '{name}'{hint} (allowed: {', '.join(self.names())})"
        )

    def get(self, name: str, field: str | None = None) -> Any:
        self.check(name, field or self.kind)
        return self._entries[name].load(field)


datasets = Registry("dataset")
models = Registry("model")
topologies = Registry("topology")
attacks = Registry("attack")
defenses = Registry("defense")

datasets.register(
    "digits",
    "privlab.data:load_digits",
    "scikit-learn's 8x8 handwritten digits, 1797 samples, 10 classes",
)
datasets.register(
    "breast_cancer",
    "privlab.data:load_breast_cancer",
    "scikit-learn's Wisconsin breast cancer, 569 samples, 30 features, 2 classes",
)
datasets.register(
    "mnist1d",
    "privlab.data:load_mnist1d",
    "MNIST-1D made locally by the mnist1d generator (never downloaded), length 40, 10 classes",
)
datasets.register(
    "synthetic",
    "privlab.data:load_synthetic",
    "scikit-learn make_classification: n_samples, n_features, n_classes, class_sep",
)
datasets.register(
    "transcriptome",
    "privlab.data_transcriptome:load_transcriptome",
    "synthetic blood transcriptomes from clinics of different sizes; the clinic is the group",
)
datasets.register(
    "maintenance",
    "privlab.data_maintenance:load_maintenance",
    "synthetic predictive maintenance: machines' sensor-window features, fails-soon labels",
)
datasets.register(
    "file",
    "privlab.data_file:load_file",
    "your own .npz (x, y[, x_test, y_test]) or .csv (label column) file",
)
datasets.register(
    "csv",
    "privlab.data_csv:load_csv",
    "your own CSV: text or numeric labels (label_column), optional group_column, standardize",
)
datasets.register(
    "image_folder",
    "privlab.data_imagefolder:load_image_folder",
    "a folder of images, one subfolder per class (as torchvision's ImageFolder); params: root",
)

datasets.register(
    "next_word",
    "privlab.data_next_word:load_next_word",
    "synthetic per-user phone typing from a grammar (user vocabularies, styles, PIN canaries)",
)
datasets.register(
    "traffic_signs",
    "privlab.data_traffic_signs:load_traffic_signs",
    "synthetic 32x32 RGB sign images per vehicle; each vehicle's region skews mix and conditions",
)
models.register(
    "next_word",
    "privlab.models_text:build_next_word",
    "next-word model: token embeddings (concat or GRU), hidden layer, softmax over the vocabulary",
)
models.register(
    "logreg", "privlab.models:build_logreg", "multinomial logistic regression (one linear layer)"
)
models.register(
    "mlp",
    "privlab.models:build_mlp",
    "multi-layer perceptron; params: hidden (list of widths), activation",
)
models.register(
    "cnn",
    "privlab.models:build_cnn",
    "small CNN (Conv1d/Conv2d + GroupNorm, Opacus-compatible); params: channels",
)
models.register(
    "python",
    "privlab.models:build_python",
    "your own nn.Module: params.factory = 'module:function' (a nets.py beside the TOML works)",
)

topologies.register(
    "central",
    "privlab.topologies.central:CentralTopology",
    "baseline: all client data pooled on one server (single point of attack)",
)
topologies.register(
    "federated",
    "privlab.topologies.federated:FederatedTopology",
    "FedAvg / FedProx: clients train locally, a server averages their updates",
)
topologies.register(
    "split",
    "privlab.topologies.split:SplitTopology",
    "split learning: bottom model on clients up to a cut layer, top on a server; vanilla/U-shaped",
)
topologies.register(
    "swarm",
    "privlab.topologies.swarm:SwarmTopology",
    "swarm learning: peers commit weights to a signed, permissioned ledger; a leader merges",
)
topologies.register(
    "pretrained",
    "privlab.topologies.pretrained:PretrainedTopology",
    "audit a model trained elsewhere: weights file, member row numbers, the declared recipe",
)

attacks.register(
    "loss_threshold",
    "privlab.attacks.membership:LossThresholdAttack",
    "membership inference by per-example loss threshold (Yeom et al. 2018); outsider, query access",
)
attacks.register(
    "lira",
    "privlab.attacks.lira:LiRAAttack",
    "LiRA likelihood-ratio MIA (Carlini et al. 2022), online/offline; outsider, reference models",
)
attacks.register(
    "lira_server",
    "privlab.attacks.lira:LiRAServerAttack",
    "LiRA by an honest-but-curious server on one client's update: was x in client k's data?",
)
attacks.register(
    "rmia",
    "privlab.attacks.rmia:RMIAAttack",
    "RMIA (Zarifzadeh et al. 2024): pairwise likelihood ratios, strong with few reference models",
)
attacks.register(
    "rmia_server",
    "privlab.attacks.rmia:RMIAServerAttack",
    "RMIA by an honest-but-curious server on one client's update: was x in client k's data?",
)
attacks.register(
    "dp_audit",
    "privlab.audit:CanaryAudit",
    "empirical DP audit: canaries in one client, one-run (Steinke et al. 2023) or multi-run "
    "lower bound on epsilon",
)
attacks.register(
    "canary_exposure",
    "privlab.attacks.text_leakage:CanaryExposureAttack",
    "exposure of a canary secret in the released next-word model (Carlini et al. 2019); outsider",
)
attacks.register(
    "word_leak",
    "privlab.attacks.text_leakage:WordLeakAttack",
    "words a user typed, from the embedding rows of their update (Melis et al. 2019); server",
)
attacks.register(
    "label_flip",
    "privlab.attacks.poisoning:LabelFlipAttack",
    "label flipping source -> target by malicious clients (Tolpegin et al. 2020)",
)
attacks.register(
    "backdoor",
    "privlab.attacks.poisoning:BackdoorAttack",
    "BadNets backdoor: trigger patch relabelled to a target class (Gu et al. 2017)",
)
attacks.register(
    "model_replacement",
    "privlab.attacks.poisoning:ModelReplacementAttack",
    "backdoored update boosted to replace the global model (Bagdasaryan et al. 2020)",
)
attacks.register(
    "sign_flip",
    "privlab.attacks.poisoning:SignFlipAttack",
    "malicious clients send -scale times their honest update",
)
attacks.register(
    "scaling",
    "privlab.attacks.poisoning:ScalingAttack",
    "malicious clients send boosted updates trained on relabelled data",
)
attacks.register(
    "gaussian_noise",
    "privlab.attacks.poisoning:GaussianAttack",
    "malicious clients send Gaussian noise (norm of an honest update by default)",
)
attacks.register(
    "alie",
    "privlab.attacks.poisoning:ALIEAttack",
    "A Little Is Enough: mean - z * std of updates (Baruch et al. 2019)",
)
attacks.register(
    "ipm",
    "privlab.attacks.poisoning:IPMAttack",
    "inner-product manipulation: -epsilon * mean of updates (Xie et al. 2019)",
)
attacks.register(
    "min_max",
    "privlab.attacks.poisoning:MinMaxAttack",
    "min-max model poisoning (Shejwalkar & Houmansadr 2021)",
)
attacks.register(
    "min_sum",
    "privlab.attacks.poisoning:MinSumAttack",
    "min-sum model poisoning (Shejwalkar & Houmansadr 2021)",
)
attacks.register(
    "label_leakage",
    "privlab.attacks.split_learning:LabelLeakageAttack",
    "split: labels from cut-layer gradients, norm or cosine (Li et al. 2022); cut-layer party",
)
attacks.register(
    "label_inference",
    "privlab.attacks.split_label_cluster:ClusterLabelInferenceAttack",
    "U-shaped split: multi-class labels from head gradients, k-means (Liu & Lyu 2022); server",
)
attacks.register(
    "activation_inversion",
    "privlab.attacks.split_inversion:ActivationInversionAttack",
    "split: server trains an inverse model on auxiliary data to rebuild inputs (He et al. 2019)",
)
attacks.register(
    "route_inference",
    "privlab.attacks.property_inference:RouteInferenceAttack",
    "split server infers a vehicle's region from its cut-layer activations (Ganju et al. 2018)",
)
attacks.register(
    "unsplit",
    "privlab.attacks.split_learning:UnSplitAttack",
    "split: server inverts activations without bottom weights, UnSplit (Erdogan et al. 2022)",
)
attacks.register(
    "feature_space_hijacking",
    "privlab.attacks.split_learning:FeatureSpaceHijackingAttack",
    "split: malicious server hijacks the client's feature space, FSHA (Pasquini et al. 2021)",
)
attacks.register(
    "dlg",
    "privlab.attacks.gradient_inversion:DLGAttack",
    "DLG gradient inversion: L2 matching of dummy inputs + soft labels (Zhu et al. 2019); server",
)
attacks.register(
    "idlg",
    "privlab.attacks.gradient_inversion:IDLGAttack",
    "iDLG: label from the classifier bias gradient, then DLG (Zhao et al. 2020); server",
)
attacks.register(
    "inverting_gradients",
    "privlab.attacks.gradient_inversion:InvertingGradientsAttack",
    "Inverting Gradients: cosine + total variation, Adam (Geiping et al. 2020); server",
)
attacks.register(
    "analytic_fc",
    "privlab.attacks.gradient_inversion:AnalyticFCAttack",
    "analytic input recovery of the first fully connected layer at batch 1; server",
)
attacks.register(
    "peer_membership",
    "privlab.attacks.swarm:PeerMembershipAttack",
    "swarm: a curious peer runs loss-threshold MIA on another peer's committed weights",
)
attacks.register(
    "rogue_peer",
    "privlab.attacks.swarm:RoguePeerAttack",
    "swarm: an enrolled peer poisons (flipped labels, boosted commits)",
)
attacks.register(
    "unenrolled_commit",
    "privlab.attacks.swarm_ledger:UnenrolledCommitAttack",
    "swarm: a node without enrolment tries to commit to the ledger (must be refused)",
)
attacks.register(
    "ledger_tamper",
    "privlab.attacks.swarm_ledger:LedgerTamperAttack",
    "swarm: an entry on the ledger is altered after the fact (verification must name it)",
)
attacks.register(
    "insider_forgery",
    "privlab.attacks.swarm_ledger:InsiderForgeryAttack",
    "swarm: an enrolled peer holding the scenario forges, replays or misattributes commits",
)

defenses.register(
    "dp_sgd",
    "privlab.defenses.dp_sgd:DPSGD",
    "DP-SGD via Opacus inside each client's local training; epsilon from Opacus' accountant",
)
defenses.register(
    "dp_fedavg",
    "privlab.defenses.dp_fedavg:DPFedAvg",
    "client-level DP-FedAvg (McMahan et al. 2018): server clips and noises updates; "
    "fixed/adaptive clipping, per-round epsilon",
)
defenses.register(
    "nopeek",
    "privlab.defenses.split_boundary:NoPeek",
    "NoPeek (Vepakomma et al. 2020): distance-correlation penalty on cut-layer activations; split",
)
defenses.register(
    "activation_noise",
    "privlab.defenses.split_boundary:ActivationNoise",
    "Gaussian noise on cut-layer activations before they leave the client; split",
)
defenses.register(
    "gradient_perturbation",
    "privlab.defenses.split_boundary:GradientPerturbation",
    "label protection: max-norm noise on cut-layer gradients (Li et al. 2022); split",
)
defenses.register(
    "krum",
    "privlab.defenses.robust_aggregation:Krum",
    "Krum: the update closest to its n - f - 2 neighbours (Blanchard et al. 2017)",
)
defenses.register(
    "multi_krum",
    "privlab.defenses.robust_aggregation:MultiKrum",
    "Multi-Krum: mean of the m best Krum-scored updates (Blanchard et al. 2017)",
)
defenses.register(
    "median",
    "privlab.defenses.robust_aggregation:Median",
    "coordinate-wise median of updates (Yin et al. 2018)",
)
defenses.register(
    "trimmed_mean",
    "privlab.defenses.robust_aggregation:TrimmedMean",
    "coordinate-wise trimmed mean of updates (Yin et al. 2018)",
)
defenses.register(
    "bulyan",
    "privlab.defenses.robust_aggregation:Bulyan",
    "Bulyan: Krum selection then trimmed mean near the median (El Mhamdi et al. 2018)",
)
defenses.register(
    "geometric_median",
    "privlab.defenses.robust_aggregation:GeometricMedian",
    "geometric median by smoothed Weiszfeld (Pillutla et al., RFA)",
)
defenses.register(
    "centered_clipping",
    "privlab.defenses.robust_aggregation:CenteredClipping",
    "centered clipping around the last aggregate (Karimireddy et al. 2021)",
)
defenses.register(
    "fltrust",
    "privlab.defenses.robust_aggregation:FLTrust",
    "FLTrust: trust by cosine to a server root-data update (Cao et al. 2021)",
)
defenses.register(
    "norm_bounding",
    "privlab.defenses.robust_aggregation:NormBounding",
    "clip each update's L2 norm, then average (Sun et al. 2019)",
)
defenses.register(
    "update_clipping",
    "privlab.defenses.robust_aggregation:UpdateClipping",
    "client-side L2 clipping of the update before it leaves the device",
)
defenses.register(
    "secure_aggregation",
    "privlab.defenses.secure_aggregation:SecureAggregation",
    "CKKS secure aggregation (TenSEAL): the server sums ciphertexts, holds no secret key",
)
defenses.register(
    "gradient_pruning",
    "privlab.defenses.update_perturbation:GradientPruning",
    "client-side pruning of the smallest update entries / top-k (Zhu et al. 2019)",
)
defenses.register(
    "update_noise",
    "privlab.defenses.update_perturbation:UpdateNoise",
    "client-side additive Gaussian noise on the update, optional L2 clipping first",
)
