"""The report's first screen: per variant, what leaks, how badly, to whom, and what each defense
cost, in words. Everything is computed from results.json; grades come from privlab.grading.

The undefended reference of a variant is the first variant without defenses (in a sweep: the
one with the same grid point, i.e. the same "|..." suffix). A defense's benefit against an
attack can only be shown when the attack leaked in the reference; otherwise the verdict says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from privlab import grading
from privlab.grading import Grade, number

_NOUN = {
    "server": "server",
    "client": "client",
    "peer": "peer",
    "outsider": "outsider",
    "eavesdropper": "eavesdropper",
    "cut_layer": "cut-layer party",
    "split_server": "split-learning server",
}
_SEES = {
    "server": "sees every message sent to the server (client updates, or only their encrypted sum)",
    "client": "sees what its own device receives (the global model each round)",
    "peer": "reads the ledger: every peer's committed weights",
    "outsider": "can only query the final model",
    "eavesdropper": "sees the messages on the network",
    "cut_layer": "sees the activations and gradients at the cut layer",
    "split_server": "sees the activations and gradients at the cut layer",
}
SEVERITY = {"high": 3, "medium": 2, "low": 1, "none": 0, "not graded": -1}


@dataclass(frozen=True)
class AttackVerdict:
    attack_id: str
    family: str
    sentence: str
    grade: Grade


@dataclass
class VariantVerdict:
    name: str
    status: str
    diverged_at: Any
    defenses: str
    accuracy: float | None
    epsilon: float | None
    epsilon_approximate: bool
    attacks: list[AttackVerdict] = field(default_factory=list)
    reference: str | None = None
    cost: list[str] = field(default_factory=list)
    benefit: list[str] = field(default_factory=list)

    @property
    def worst(self) -> str:
        graded = [a.grade.level for a in self.attacks]
        return max(graded, key=lambda g: SEVERITY.get(g, -1)) if graded else "not graded"


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _pct(f: float) -> str:
    return f"{f:.1%}".replace(".0%", "%")


def _party(entry: dict[str, Any]) -> str:
    """Whose data the attack targets, in words ("client 0"; "" when everyone's)."""
    party = _dict(entry.get("threat_model")).get("party")
    params = _dict(entry.get("params"))
    for key in ("client", "target_client", "victim", "target_peer"):
        if party is None and isinstance(params.get(key), int | str) and params.get(key) != "auto":
            party = params[key]
    if party is None:
        return ""
    text = str(party)
    for prefix in ("client", "peer"):
        if text.startswith(prefix) and text[len(prefix) :].isdigit():
            return f"{prefix} {text[len(prefix) :]}"
    return f"client {text}" if text.isdigit() else text


def _adversary(tm: dict[str, Any]) -> str:
    return str(tm.get("adversary") or tm.get("observer") or "adversary")


def _knowledge(tm: dict[str, Any]) -> list[str]:
    k = tm.get("knowledge")
    items = [k] if isinstance(k, str) else list(k) if isinstance(k, list | tuple) else []
    return [str(x).replace("_", " ") for x in items]


def subject(threat_model: dict[str, Any]) -> str:
    """ "a curious server", "a malicious client", "an outsider"."""
    adv = _adversary(threat_model)
    noun = _NOUN.get(adv, adv.replace("_", " "))
    if adv == "outsider":
        return "an outsider"
    mood = "malicious" if threat_model.get("active") else "curious"
    return f"a {mood} {noun}"


def adversary_sentence(attack_id: str, entry: dict[str, Any]) -> str:
    """The adversary in one sentence, from the attack's threat model."""
    tm = _dict(entry.get("threat_model"))
    adv = _adversary(tm)
    noun = _NOUN.get(adv, adv.replace("_", " "))
    if adv == "outsider":
        who = "An outsider"
    elif tm.get("active"):
        who = f"A malicious {noun} (active: it deviates from the protocol)"
    else:
        who = f"An honest-but-curious {noun} (passive: it follows the protocol)"
    sees = _SEES.get(adv, "sees what its position in the protocol lets it see")
    knowledge = _knowledge(tm)
    text = f"{who} {sees}"
    if knowledge:
        text += f" and knows {', '.join(knowledge)}"
    if party := _party(entry):
        text += f"; it targets {party}"
    return f"{text}."


def attack_sentence(entry: dict[str, Any], g: Grade, accuracy: float | None) -> str:
    """What the attack achieved, in plain words, ending with its grade."""
    m = _dict(entry.get("metrics"))
    who = subject(_dict(entry.get("threat_model")))
    party = _party(entry)
    family = str(entry.get("family") or "")
    if g.family == "membership" and g.value is not None and g.fpr is not None:
        whose = f"members of {party}" if party else "training members"
        tpr = g.value * g.fpr
        mark = " (below resolution)" if g.below_resolution else ""
        if g.level == "none":
            text = (
                f"{who} cannot tell {whose} from non-members better than chance at "
                f"{_pct(g.fpr)} FPR (TPR {tpr:.3g}{mark})"
            )
        else:
            text = (
                f"{who} tells {whose} from non-members at {g.value:.1f}x the false-positive "
                f"rate at {_pct(g.fpr)} FPR (TPR {tpr:.3g}{mark})"
            )
        if (auc := number(m.get("auc"))) is not None:
            text += f", AUC {auc:.3f}"
    elif g.family == "reconstruction":
        whose = f"{party}'s" if party else "the clients'"
        psnr = number(m.get("psnr"))
        text = f"{who} reconstructs {whose} inputs"
        text += f" at {psnr:.1f} dB PSNR" if psnr is not None else ""
        if g.value is not None:
            text += f", {g.value:+.1f} dB over a know-nothing guess"
        elif (mse := number(m.get("mse"))) is not None and psnr is None:
            text += f" with MSE {mse:.3g}"
    elif g.family == "backdoor":
        rate = number(m.get("backdoor_success")) or 0.0
        n = number(m.get("malicious_clients"))
        if n == 0:
            text = f"no attacker here; triggered inputs hit the target {rate:.0%} of the time"
        else:
            text = f"{who} implants a backdoor that fires on {rate:.0%} of triggered test inputs"
    elif g.family == "label_leakage":
        whose = f"{party}'s" if party else "the clients'"
        if g.value is not None:
            text = f"{who} recovers {whose} labels with AUC {g.value:.3f} (chance 0.5)"
        else:  # a multi-class attack: accuracy beside the class prior
            acc, base = number(m.get("accuracy")), number(m.get("accuracy_baseline"))
            text = f"{who} recovers {whose} labels" + (
                f" with accuracy {acc:.3f} (class prior {base:.3f})"
                if acc is not None and base is not None
                else ""
            )
    elif family == "audit":
        lb = number(m.get("epsilon_lower_bound"))
        conf = 1 - (number(m.get("alpha")) or 0.05)
        text = f"a DP audit ({party or 'canaries'}) bounds ε from below at " + (
            f"{lb:.2f} with {conf:.0%} confidence" if lb is not None else "—"
        )
    elif family == "poisoning":
        n = number(m.get("malicious_clients"))
        frac = number(m.get("malicious_fraction"))
        if n == 0:
            text = "no attacker in this variant (0 malicious clients)"
        else:
            text = f"{who}s" if n and n > 1 else who
            text += f" ({frac:.0%} of clients)" if frac is not None else ""
            text += " poison training"
            if (t := number(m.get("targeted_misclassification"))) is not None:
                text += f"; targeted misclassification {t:.0%}"
            if accuracy is not None:
                text += f"; clean accuracy {accuracy:.3f}"
    else:
        gained = [
            k for k in m if number(m.get(f"{k}_gain")) is not None and number(m[k]) is not None
        ]
        if gained:  # metrics with a know-nothing baseline first: they say how much was learned
            text = f"{who}: " + ", ".join(
                f"{k.replace('_', ' ')} {number(m[k]):.3g} ({number(m[f'{k}_gain']):+.3g} over "
                f"a know-nothing guess)"
                for k in gained[:2]
            )
        else:
            shown = [(k, v) for k, v in m.items() if number(v) is not None][:3]
            text = f"{who}: " + ", ".join(f"{k} = {number(v):.3g}" for k, v in shown)
    if g.level == "not graded":
        return f"{text}: not graded"
    return f"{text}: {g.level}"


def _reference(name: str, variants: dict[str, dict[str, Any]]) -> str | None:
    """The undefended variant to compare `name` against (None when there is none)."""
    undefended = [
        n for n, v in variants.items() if not v.get("defenses") and v.get("status") != "diverged"
    ]
    if not undefended or name in undefended:
        return None
    suffix = name.partition("|")[2]
    same_point = [n for n in undefended if n.partition("|")[2] == suffix]
    return (same_point or undefended)[0]


def _ratio(new: float | None, old: float | None, fmt: Any) -> str:
    if new is None:
        return "—"
    if old is None or old == 0:
        return fmt(new)
    return f"{new / old:.2f}x ({fmt(new)} vs {fmt(old)})"


def _cost(v: dict[str, Any], ref: dict[str, Any], fmt_s: Any, fmt_b: Any) -> list[str]:
    acc = number(_dict(v.get("utility")).get("final_accuracy"))
    ref_acc = number(_dict(ref.get("utility")).get("final_accuracy"))
    out = []
    if acc is not None and ref_acc is not None:
        out.append(f"accuracy {acc - ref_acc:+.3f} ({acc:.3f} vs {ref_acc:.3f})")
    p = _dict(v.get("privacy"))
    if (eps := number(p.get("epsilon"))) is not None:
        sign = "≈" if p.get("approximate") else "="
        out.append(f"ε {sign} {eps:.2f} (δ = {number(p.get('delta')) or 0:g}; none without it)")
    else:
        out.append("no formal ε")
    cost, ref_cost = _dict(v.get("cost")), _dict(ref.get("cost"))
    for what, key, fmt in (("time", "seconds", fmt_s), ("bytes", "bytes_total", fmt_b)):
        if (new := number(cost.get(key))) is not None:
            out.append(f"{what} {_ratio(new, number(ref_cost.get(key)), fmt)}")
    return out


def _benefit(
    verdicts: list[AttackVerdict], ref_verdicts: dict[str, AttackVerdict], ref_name: str
) -> list[str]:
    out = []
    for a in verdicts:
        r = ref_verdicts.get(a.attack_id)
        if r is None or a.grade.value is None or r.grade.value is None:
            continue
        unit = grading.UNITS.get(a.grade.family, "")
        if r.grade.level == "none":
            out.append(
                f"{a.attack_id} found no leak in '{ref_name}' ({r.grade.value:.3g}{unit}), so this "
                "run cannot show the defense's benefit against it"
            )
        else:
            out.append(
                f"{a.attack_id}: {r.grade.value:.3g}{unit} ({r.grade.level}) → "
                f"{a.grade.value:.3g}{unit} ({a.grade.level})"
            )
    return out


def verdicts(results: dict[str, Any], fmt_s: Any = str, fmt_b: Any = str) -> list[VariantVerdict]:
    """One verdict per variant, in the results' order."""
    variants = {str(k): v for k, v in _dict(results.get("variants")).items() if isinstance(v, dict)}
    overrides = grading.overrides_of(results)
    out: dict[str, VariantVerdict] = {}
    for name, v in variants.items():
        acc = number(_dict(v.get("utility")).get("final_accuracy"))
        p = _dict(v.get("privacy"))
        vv = VariantVerdict(
            name=name,
            status=str(v.get("status") or "ok"),
            diverged_at=v.get("diverged_at_round"),
            defenses=", ".join(str(_dict(d).get("name") or "?") for d in _list(v.get("defenses"))),
            accuracy=acc,
            epsilon=number(p.get("epsilon")),
            epsilon_approximate=bool(p.get("approximate")),
        )
        for aid, entry in _dict(v.get("attacks")).items():
            entry = _dict(entry)
            family = str(entry.get("family") or "")
            g = grading.grade(family, _dict(entry.get("metrics")), overrides)
            vv.attacks.append(AttackVerdict(str(aid), family, attack_sentence(entry, g, acc), g))
        out[name] = vv
    for name, vv in out.items():
        ref = _reference(name, variants)
        if ref is None:
            continue
        vv.reference = ref
        vv.cost = _cost(variants[name], variants[ref], fmt_s, fmt_b)
        if vv.status != "diverged":
            vv.benefit = _benefit(vv.attacks, {a.attack_id: a for a in out[ref].attacks}, ref)
    return list(out.values())


def overall(verdicts_: list[VariantVerdict]) -> tuple[str, list[str]]:
    """The highest grade of the run and where it was reached ("variant / attack")."""
    worst = "not graded"
    where: list[str] = []
    for v in verdicts_:
        for a in v.attacks:
            sev, cur = SEVERITY.get(a.grade.level, -1), SEVERITY.get(worst, -1)
            if sev > cur:
                worst, where = a.grade.level, []
            if sev == SEVERITY.get(worst, -1) and sev >= 0:
                where.append(f"{v.name} / {a.attack_id}")
    return worst, where


def adversaries(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(attacks, one-sentence adversary) in order of appearance; attacks that share an
    adversary share its sentence ("idlg, ig (inverting_gradients)")."""
    seen: dict[str, str] = {}
    ids: set[str] = set()
    for v in _dict(results.get("variants")).values():
        for aid, entry in _dict(_dict(v).get("attacks")).items():
            if str(aid) not in ids:
                ids.add(str(aid))
                name = str(_dict(entry).get("name") or aid)
                label = str(aid) if name == str(aid) else f"{aid} ({name})"
                seen[label] = adversary_sentence(str(aid), _dict(entry))
    grouped: dict[str, list[str]] = {}
    for label, sentence in seen.items():
        grouped.setdefault(sentence, []).append(label)
    return [(", ".join(labels), sentence) for sentence, labels in grouped.items()]


def headline(entry: dict[str, Any], g: Grade) -> tuple[str, str]:
    """(metric name, value) of an attack's key number, short enough for a terminal column:
    TPR at low FPR for membership, PSNR and baseline for reconstruction, backdoor success,
    label-leak AUC; the first numeric metric otherwise."""
    m = _dict(entry.get("metrics"))
    family = str(entry.get("family") or "")
    if g.family == "membership" and g.fpr is not None and g.value is not None:
        mark = "†" if g.below_resolution else ""
        return f"TPR@{_pct(g.fpr)}FPR", f"{g.value * g.fpr:.3g}{mark} ({g.value:.1f}x)"
    if g.family == "reconstruction" or family in ("gradient_inversion", "input_reconstruction"):
        psnr, base = number(m.get("psnr")), number(m.get("psnr_baseline"))
        if psnr is not None:
            if base is None and (gain := number(m.get("psnr_gain"))) is not None:
                base = psnr - gain
            return "PSNR", f"{psnr:.1f} dB (base {'—' if base is None else f'{base:.1f}'})"
        mse, mbase = number(m.get("mse")), number(m.get("mse_baseline"))
        if mse is not None:
            return "MSE", f"{mse:.3g} (base {'—' if mbase is None else f'{mbase:.3g}'})"
    if g.family == "backdoor":
        return "backdoor success", f"{number(m.get('backdoor_success')):.3f}"
    if g.family == "label_leakage" and g.value is not None:
        return "leak AUC", f"{g.value:.3f}"
    if g.family == "label_leakage" and (acc := number(m.get("accuracy"))) is not None:
        base = number(m.get("accuracy_baseline"))
        return "label accuracy", f"{acc:.3f} (prior {'—' if base is None else f'{base:.3f}'})"
    if family == "audit" and (lb := number(m.get("epsilon_lower_bound"))) is not None:
        return "ε lower bound", f"{lb:.2f}"
    if (t := number(m.get("targeted_misclassification"))) is not None:
        return "targeted miscl.", f"{t:.3f}"
    if (auc := number(m.get("auc"))) is not None:
        return "AUC", f"{auc:.3f}"
    for k, v in m.items():
        if (f := number(v)) is not None:
            return k.replace("_", " "), f"{f:.3g}"
    return "", "—"
