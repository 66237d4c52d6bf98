"""Metric independence: which of a report's metrics is the scorer that built the training pairs (SPEC section 9).

Training on pairs chosen by a metric and then selecting or judging by the same metric inflates that
metric (metric interference, "MINT", Pombal et al. 2025). Each run records which scorer chose its pairs
(``results.json`` provenance ``pair_scorers``, from the rows' provenance) and the identity of every scorer
of its held-out metrics (``eval_scorers``). A metric *rests on the pair-building scorer* when it is that
scorer: the same identity, a member of it (KIWI in the KIWI+XCOMET mean) or containing it, the same name,
or a scorer of the same model family by name (``kiwi``, ``xcomet``, ``comet``, ``demo_qe``, ``chrf``,
``bleu``). A method whose loss uses neither side the scorer chose (SFT on the references), or that did not train
(round 0 of a rounds run), is exempt.
A comparison rests on it when the metric does for the method or for the baseline. The report marks
every such column, row and verdict with † and says whether ``select_by`` is one.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cpo.report.loading import JobResult

MARK = "†"
# Families by name (checked in this order; "xcomet" before "comet" so that XCOMET is not plain COMET).
_FAMILIES = ("xcomet", "kiwi", "comet", "demo_qe", "chrf", "bleu")
# Corpus metrics of the test tables and the scorer family they belong to.
_CORPUS_FAMILY = {"bleu": "bleu", "chrf": "chrf", "chrfpp": "chrf"}


def families(name: str | None) -> set[str]:
    """Model families named in a scorer or metric name: ``kiwi_xcomet`` -> {kiwi, xcomet}; ``comet22`` -> {comet}."""
    text = (name or "").lower()
    out = set()
    for fam in _FAMILIES:
        if fam in text:
            out.add(fam)
            text = text.replace(fam, " ")
    return out


def _members_overlap(a: str | None, b: str | None) -> bool:
    """Equal identities, or one inside the other (a mean scorer's identity lists its members' identities)."""
    if not a or not b:
        return False
    return a == b or (min(len(a), len(b)) >= 8 and (a in b or b in a))


def same_scorer(pair: Mapping, metric: str, identity: str | None) -> bool:
    """Whether the held-out metric ``metric`` (scorer identity ``identity`` when it is a scorer) is the pair
    scorer ``pair`` (``{"scorer", "scorer_identity"}`` of ``cpo.data.records.pair_scorers``)."""
    name, ident = pair.get("scorer"), pair.get("scorer_identity")
    if name is None and ident is None:
        return False
    if identity is not None and (_members_overlap(identity, ident) or _members_overlap(identity, name)):
        return True
    if metric == name:
        return True
    mine = {_CORPUS_FAMILY[metric]} if metric in _CORPUS_FAMILY else families(metric)
    return bool(mine & families(name))  # not the identity's words: 'sacrebleu...:sentence_chrf' is no BLEU


def _exempt(job: JobResult) -> bool:
    """The scorer's choice never reached the weights: SFT on the references, or a run of 0 steps (the start model
    of a rounds run, round 0)."""
    r = job.results or {}
    loss = (r.get("config") or {}).get("loss") or {}
    return (isinstance(loss, Mapping) and loss.get("kind") == "none" and loss.get("nll_target") == "reference") \
        or r.get("global_steps") == 0


def _label(pair: Mapping) -> str:
    name, ident = pair.get("scorer"), pair.get("scorer_identity")
    return f"{name} ({ident})" if ident and ident != name else str(name)


@dataclass
class Independence:
    """Per method: its pair-building scorers and the metrics (base names: ``demo_qe``, ``chrf``) that are one."""

    scorers: dict[str, list[str]] = field(default_factory=dict)  # method -> pair scorer labels
    same: dict[str, set[str]] = field(default_factory=dict)      # method -> metrics resting on its pair scorer
    unknown: list[str] = field(default_factory=list)             # methods whose runs did not record their scorer
    exempt: list[str] = field(default_factory=list)              # methods whose loss ignores the scorer's choice

    def rests_on(self, method: str, metric: str) -> bool:
        return metric in self.same.get(method, set())

    def comparison_rests_on(self, method: str, baseline: str | None, metric: str) -> bool:
        return self.rests_on(method, metric) or (baseline is not None and self.rests_on(baseline, metric))

    @property
    def metrics(self) -> set[str]:
        return set().union(*self.same.values()) if self.same else set()

    def as_dict(self) -> dict:
        return {"pair_scorers": self.scorers, "same_scorer_metrics": {k: sorted(v) for k, v in self.same.items()},
                "unknown": self.unknown, "exempt": self.exempt}


def metric_independence(jobs: Sequence[JobResult], method_of: Mapping[str, str],
                        metrics: Sequence[str]) -> Independence:
    """``method_of``: configuration label -> method; ``metrics``: the base names the report shows (test and val)."""
    out = Independence()
    for j in jobs:
        if not j.ok:
            continue
        method = method_of.get(j.label)
        if method is None:
            continue
        prov = (j.results or {}).get("provenance") or {}
        pairs = prov.get("pair_scorers")
        if pairs is None:
            if method not in out.unknown:
                out.unknown.append(method)
            continue
        if _exempt(j):
            if method not in out.exempt:
                out.exempt.append(method)
            continue
        evals = prov.get("eval_scorers") or {}
        labels = out.scorers.setdefault(method, [])
        same = out.same.setdefault(method, set())
        for pair in pairs:
            if pair.get("scorer") is None and pair.get("scorer_identity") is None:
                continue
            if _label(pair) not in labels:
                labels.append(_label(pair))
            same |= {m for m in metrics if same_scorer(pair, m, evals.get(m))}
    return out


def independence_text(ind: Independence, select_by: str, display) -> str:
    """The report's paragraph on metric independence (Markdown)."""
    if not ind.scorers and not ind.unknown:
        return ""
    parts = []
    for method, labels in ind.scorers.items():
        same = sorted(ind.same.get(method, set()))
        parts.append(f"{display(method)}: pairs chosen by {', '.join(f'`{x}`' for x in labels)}"
                     + (f", the scorer of {', '.join(f'`{m}`' for m in same)}" if same else
                        ", which is none of the reported metrics"))
    text = "Metric independence (MINT): " + "; ".join(parts) + "."
    if ind.exempt:
        text += (" Exempt (the loss uses neither side the scorer chose, or it did not train): "
                 + ", ".join(display(m) for m in ind.exempt) + ".")
    if ind.unknown:
        text += (" Not recorded (runs of older code): " + ", ".join(display(m) for m in ind.unknown)
                 + "; their metrics may rest on the pair-building scorer.")
    base = select_by.split("/", 1)[-1] if select_by else ""
    if base and base in ind.metrics:
        text += (f" **Selection by `{select_by}` rests on the scorer that built the pairs**: the selected points "
                 "and every comparison on that metric are inflated by metric interference; select by an "
                 "independent metric (e.g. `select_by=val/chrf`).")
    elif base:
        text += f" Selection by `{select_by}` is independent of the pair-building scorers."
    if ind.metrics:
        text += (f" {MARK}: a metric (column, row or verdict) that is the pair-building scorer of the method or of "
                 "its baseline; read those as inflated, and the other metrics as the independent evidence.")
    return text
