"""Apply, arena: answers per model version, battles judged in both orders, ratings and gates.

Everything is keyed by content: an answer by (prompt, model version's files, generation
settings), an endpoint contestant's by (prompt, its base URL and model, generation settings;
for a Deployment also the version it serves), a battle by (prompt, both answers' keys, judge
and rubric). A rerun finds every answer and judged battle and only fits the ratings again;
a new model version battles only what it needs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.api import split_ref
from controller.api.arena import (
    ArenaJudge,
    ArenaSpec,
    DeploymentContestant,
    EndpointContestant,
    EndpointJudge,
    FilePrompts,
    MetricJudge,
)
from controller.apply.context import ApplyStep
from controller.apply.prepare import Preparer
from controller.apply.pull import ensure_model
from controller.apply.served import deployment_endpoint
from controller.state.lockfile import (
    ArenaOutputs,
    EndpointUsage,
    GateVerdict,
    JudgeQuality,
    Standing,
)
from controller.state.registry.arena import ArenaStore, BattleRecord
from controller.state.registry.schema import VersionRow
from runners.arena.agreement import agreement, position_bias
from runners.arena.answers import answer_key, generate_answers
from runners.arena.chat_endpoint import ChatEndpoint
from runners.arena.endpoint_answers import endpoint_answers
from runners.arena.endpoint_judge import EndpointJudge as EndpointJudgeRunner
from runners.arena.judge import MetricJudge as MetricJudgeRunner
from runners.arena.judge import PairwiseJudge, Reference, judge_battle
from runners.arena.outcomes import Vote
from runners.errors import InvalidInput, LlmopsError

if TYPE_CHECKING:
    from runners.arena.ratings import Leaderboard


class ArenaError(LlmopsError):
    """An arena cannot run as written; the message says what to do."""


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    reference: Reference | None = None  # when the prompt set names a reference field


@dataclass(frozen=True)
class EndpointCall:
    """How an endpoint contestant is asked; the key stays in its variable."""

    base_url: str
    model: str
    key_env: str | None
    concurrency: int
    retries: int
    timeout_s: float
    field: str  # its settings' path in the spec, for messages: "models[2].endpoint"
    serves: str | None = None  # a Deployment's: the version it serves

    def identity(self) -> str:
        """What the answers depend on: where, which model (and version): not the key."""
        parts = {"endpoint": self.base_url.rstrip("/"), "model": self.model}
        if self.serves is not None:
            parts["serves"] = self.serves
        return "endpoint:" + json.dumps(parts, sort_keys=True)


@dataclass
class Contender:
    ref: str  # as the spec's gates name it: the reference, or an endpoint's name
    label: str  # name@number; an endpoint contestant's name
    identity: str  # content digest of the version's files; an endpoint's identity
    path: Path | None  # the version's files; None for an endpoint
    endpoint: EndpointCall | None = None


@dataclass
class ArenaResult:
    name: str
    contenders: list[Contender]
    battles: list[BattleRecord]
    boards: dict[str, Leaderboard]  # all | judge | human
    gates: dict[str, GateVerdict] = field(default_factory=dict)
    judge: JudgeQuality | None = None
    generated: int = 0
    judged: int = 0
    unparseable: int = 0
    judge_requests: int = 0  # HTTP requests to an endpoint judge this run, retries included
    judge_retries: int = 0
    endpoints: dict[str, EndpointUsage] = field(default_factory=dict)  # by contestant label

    def outputs(self) -> ArenaOutputs:
        votes: dict[str, int] = {}
        for battle in self.battles:
            for vote in battle.votes:
                if vote.winner is not None:
                    votes[vote.voter_kind] = votes.get(vote.voter_kind, 0) + 1
        return ArenaOutputs(
            models={c.ref: c.label for c in self.contenders},
            battles=len(self.battles),
            votes=dict(sorted(votes.items())),
            unparseable=sum(1 for b in self.battles for v in b.votes if v.winner is None),
            decided=sum(s.wins for s in self.boards["all"].standings),
            leaderboard=[
                Standing(
                    model=s.model,
                    rating=round(s.rating, 1),
                    lower=round(s.lower, 1),
                    upper=round(s.upper, 1),
                    rank=s.rank,
                    battles=s.battles,
                )
                for s in self.boards["all"].standings
            ],
            gates=self.gates,
            judge=self.judge,
            endpoints=self.endpoints,
        )


def version_identity(version: VersionRow) -> str:
    """What a model version is, by content: its files' digests (names and tags do not count)."""
    files = sorted((f.path, f.sha256) for f in version.files)
    return "sha256:" + hashlib.sha256(json.dumps(files).encode()).hexdigest()


def prompt_of(row: dict[str, Any], field_name: str | None) -> str | None:
    """The prompt in a row: the named field, else prompt / question / the first user turn."""
    if field_name:
        value = row.get(field_name)
        return value if isinstance(value, str) else None
    for key in ("prompt", "question", "instruction"):
        if isinstance(row.get(key), str):
            return row[key]
    for message in row.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "user":
            return str(message.get("content", ""))
    return None


def choose_prompts(prompts: list[Prompt], count: int, seed: int) -> list[Prompt]:
    """The same `count` prompts for every pair, chosen by content so a new prompt set row
    does not reshuffle the others."""
    ranked = sorted(
        prompts, key=lambda p: hashlib.sha256(f"{seed}:{p.id}:{p.text}".encode()).hexdigest()
    )
    return ranked[:count]


def battle_key(prompt: Prompt, key_a: str, key_b: str, judge: dict[str, Any] | None) -> str:
    payload: dict[str, Any] = {"prompt": prompt.text, "a": key_a, "b": key_b, "judge": judge}
    if prompt.reference is not None:  # only then: battles stored before references keep keys
        payload["reference"] = reference_extra(prompt.reference)
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def reference_extra(reference: Reference) -> dict[str, Any]:
    """A reference as a battle stores it (in its extra fields, exported with it)."""
    out: dict[str, Any] = {}
    if reference.answer is not None:
        out["answer"] = reference.answer
    if reference.keywords:
        out["keywords"] = list(reference.keywords)
    return out


def reference_of(battle: BattleRecord) -> Reference | None:
    stored = battle.extra.get("reference")
    if not isinstance(stored, dict):
        return None
    return Reference(stored.get("answer"), tuple(stored.get("keywords") or ()))


def votes_of(
    battles: list[BattleRecord],
    voters: str = "all",
    human: bool = True,
    judge: bool = True,
) -> list[Vote]:
    """The counted votes; `human=False` (an arena with `human_votes: false`) drops people's,
    `judge=False` (a judge short of `judge.require_agreement`) drops the judge's."""
    return [
        v
        for b in battles
        for v in b.vote_objects(voters)
        if (human or v.voter_kind != "human") and (judge or v.voter_kind != "judge")
    ]


def judge_label_of(spec: ArenaSpec, model_label: str = "") -> str:
    """The voter id of the arena's judge: the judge model's 'name@3', or 'metric:rouge_l'."""
    if isinstance(spec.judge, MetricJudge):
        return f"metric:{spec.judge.metric}"
    if isinstance(spec.judge, EndpointJudge):
        return f"endpoint:{spec.judge.model}"
    return model_label


def judge_quality(
    spec: ArenaSpec, battles: list[BattleRecord], judge_label: str | None
) -> JudgeQuality | None:
    """The judge's position bias over battles judged in both orders, its agreement with the
    human votes on the same battles (percent, Cohen's kappa, bootstrap intervals), and
    whether its votes count under `judge.require_agreement`."""
    if spec.judge is None:
        return None
    # None (a reader without the judge's version at hand): every judge vote counts as its.
    judge_label = judge_label or judge_label_of(spec) or None
    judges: set[str] = set()
    orders: list[tuple[str | None, str | None]] = []
    shared: list[list[tuple[str, str]]] = []
    for battle in battles:
        verdict = next(
            (
                v
                for v in battle.votes
                if v.voter_kind == "judge" and judge_label in (None, v.voter_id)
            ),
            None,
        )
        if verdict is None:
            continue
        judges.add(verdict.voter_id)
        by_order = {
            d.get("order"): d.get("verdict") for d in (verdict.detail or {}).get("verdicts", [])
        }
        if "ab" in by_order and "ba" in by_order:
            orders.append((by_order["ab"], by_order["ba"]))
        if verdict.winner is None or not spec.human_votes:
            continue
        people = battle.vote_objects("human")
        if people:
            shared.append([(verdict.winner, v.winner) for v in people])
    bias, compared = position_bias(orders)
    boot = spec.bootstrap
    agreed = agreement(shared, rounds=boot.rounds, confidence=boot.confidence, seed=boot.seed)
    counted, detail = True, ""
    need = spec.judge.require_agreement
    if need is not None:
        short = []
        if agreed.pairs < need.min_shared:
            short.append(f"{agreed.pairs} shared vote(s), {need.min_shared} needed")
        else:
            if need.min_kappa is not None and (
                agreed.kappa is None or agreed.kappa < need.min_kappa
            ):
                shown = "undefined" if agreed.kappa is None else f"{agreed.kappa:.2f}"
                short.append(f"Cohen's kappa {shown} is below {need.min_kappa:.2f}")
            if need.min_percent is not None and (agreed.percent or 0.0) < need.min_percent:
                short.append(
                    f"agreement {agreed.percent or 0.0:.0%} is below {need.min_percent:.0%}"
                )
        counted = not short
        detail = (
            "judge votes not counted: " + "; ".join(short)
            if short
            else "judge votes counted: agreement with people meets judge.require_agreement"
        )
    return JudgeQuality(
        judge=judge_label or ", ".join(sorted(judges)) or "judge",
        both_orders=compared,
        position_bias=bias,
        shared=agreed.pairs,
        agreement=agreed.percent,
        agreement_interval=agreed.percent_interval,
        kappa=agreed.kappa,
        kappa_interval=agreed.kappa_interval,
        confidence=agreed.confidence,
        counted=counted,
        detail=detail,
    )


class ArenaRunner(ApplyStep):
    """Runs the Arena specs of one loaded repository."""

    @property
    def store(self) -> ArenaStore:
        return ArenaStore(self.registry)

    def spec(self, name: str) -> ArenaSpec:
        resource = self.desired.resources.get(f"Arena/{name}")
        if resource is None:
            known = sorted(r.name for r, _ in self.desired.specs(ArenaSpec))
            raise InvalidInput(
                f"no Arena spec named '{name}'"
                + (f"; arenas: {', '.join(known)}" if known else "; add one under specs/arenas/")
            )
        return resource.spec_as(ArenaSpec)

    def contenders(self, spec: ArenaSpec) -> list[Contender]:
        out = []
        for index, entry in enumerate(spec.models):
            if isinstance(entry, EndpointContestant):
                target = entry.endpoint
                call = EndpointCall(
                    target.base_url,
                    target.model,
                    target.api_key.env if target.api_key else None,
                    target.concurrency,
                    target.retries,
                    target.timeout_s,
                    field=f"models[{index}].endpoint",
                )
                out.append(Contender(entry.name, entry.name, call.identity(), None, call))
                continue
            if isinstance(entry, DeploymentContestant):
                served = deployment_endpoint(self.root, entry.deployment)
                call = EndpointCall(
                    served.base_url,
                    entry.deployment,
                    served.key_env,
                    entry.concurrency,
                    entry.retries,
                    entry.timeout_s,
                    field=f"models[{index}]",
                    serves=served.version,
                )
                name = entry.name or entry.deployment
                out.append(Contender(name, name, call.identity(), None, call))
                continue
            version, path = self._model(entry)
            label = f"{version.model.name}@{version.number}"
            out.append(Contender(entry, label, version_identity(version), path))
        labels = [c.label for c in out]
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ArenaError(
                f"references in 'models' name the same version {', '.join(duplicates)}: "
                "an arena needs different versions; move an alias or pin another version"
            )
        return out

    def _model(self, ref: str) -> tuple[VersionRow, Path]:
        return ensure_model(
            ref, dict(self.desired.resources), self.registry, self.root, self.console
        )

    def prompts(self, spec: ArenaSpec) -> list[Prompt]:
        source = spec.prompts
        if isinstance(source, FilePrompts):
            path = self.root / source.path
            field_name: str | None = source.field or "question"
            id_field = source.id_field or "id"
        else:
            prepared = Preparer(self.loaded, self.registry, self.console).prepare(
                split_ref(source.dataset)[0]
            )
            path = prepared.folder / f"{source.split}.jsonl"
            field_name, id_field = source.field, "id"
        prompts: list[Prompt] = []
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                text = prompt_of(row, field_name)
                if not text:
                    raise InvalidInput(
                        f"{path}:{number}: no prompt in field "
                        f"'{field_name or 'prompt/question/messages'}'; set 'prompts.field' "
                        "to the column holding the prompt"
                    )
                prompt_id = str(row.get(id_field) or f"row-{number}")
                prompts.append(Prompt(prompt_id, text, self._reference(source, row, path, number)))
        limit = source.limit
        prompts = prompts[:limit] if limit else prompts
        if not prompts:
            raise ArenaError(f"the prompt set of the arena ({path}) has no rows")
        return prompts

    @staticmethod
    def _reference(source: Any, row: dict[str, Any], path: Path, number: int) -> Reference | None:
        """The row's reference answer and keywords, when the prompt set names their fields."""
        if source.reference is None and source.keywords is None:
            return None
        answer = None
        if source.reference is not None:
            answer = row.get(source.reference)
            if not isinstance(answer, str) or not answer.strip():
                raise InvalidInput(
                    f"{path}:{number}: no reference answer in field '{source.reference}'; "
                    "give every row one or set 'prompts.reference' to the field holding it"
                )
        keywords: tuple[str, ...] = ()
        if source.keywords is not None:
            listed = row.get(source.keywords)
            if isinstance(listed, str):
                listed = [listed]
            if (
                not isinstance(listed, list)
                or not listed
                or not all(isinstance(k, str) and k for k in listed)
            ):
                raise InvalidInput(
                    f"{path}:{number}: field '{source.keywords}' must list the keywords "
                    "(non-empty strings); fix the row or set 'prompts.keywords'"
                )
            keywords = tuple(listed)
        return Reference(answer, keywords)

    # ----- the run ---------------------------------------------------------------------
    def run(self, name: str) -> ArenaResult:
        spec = self.spec(name)
        contenders = self.contenders(spec)
        chosen = choose_prompts(self.prompts(spec), spec.battles_per_pair, spec.generation.seed)
        # Answers and verdicts belong to the code that produced them and to the trust of
        # the ref that ran it: a pull request's are never read back on main.
        generation = {
            **spec.generation.model_dump(mode="json"),
            "code": self.code_digest("arena"),
            "namespace": self.namespace,
        }
        keys = {
            (c.label, p.id): answer_key(p.text, c.identity, generation)
            for c in contenders
            for p in chosen
        }
        generated, endpoints = self._answer(name, contenders, chosen, generation, keys)
        judge_spec = spec.judge
        judge_label, judge_identity, judge_path = self._judge_identity(spec, generation["code"])
        store = self.store
        battle_ids = self._add_battles(name, contenders, chosen, keys, judge_identity)
        judged = unparseable = requests = retried = 0
        if judge_spec:
            judged, unparseable, requests, retried = self._judge(
                store, battle_ids, judge_label, judge_spec, judge_path
            )
        labels = {c.label for c in contenders}
        battles = [b for b in store.battles(name) if b.model_a in labels and b.model_b in labels]
        quality = judge_quality(spec, battles, judge_label)
        boards = self.boards(spec, battles, judge=quality is None or quality.counted)
        result = ArenaResult(
            name,
            contenders,
            battles,
            boards,
            generated=generated,
            judged=judged,
            unparseable=unparseable,
            judge_requests=requests,
            judge_retries=retried,
            endpoints=endpoints,
        )
        result.judge = quality
        result.gates = self.gates(
            spec, contenders, battles, judge=quality is None or quality.counted
        )
        self.save(name, result)
        return result

    def _judge_identity(
        self, spec: ArenaSpec, code: str
    ) -> tuple[str, dict[str, Any] | None, Path | None]:
        """The judge's label, its verdicts' identity (None: no judge), a judge model's path."""
        judge_spec = spec.judge
        judge_identity: dict[str, Any] | None = None
        judge_label = ""
        judge_path: Path | None = None
        if isinstance(judge_spec, MetricJudge):
            judge_label = judge_label_of(spec)
            judge_identity = {
                "code": code,
                "namespace": self.namespace,
                "metric": judge_spec.metric,
                "tie_band": judge_spec.tie_band,
            }
        elif isinstance(judge_spec, EndpointJudge):
            judge_label = judge_label_of(spec)
            # what the endpoint is and how it is asked; never the key, nor its variable
            judge_identity = {
                "code": code,
                "namespace": self.namespace,
                "endpoint": judge_spec.base_url.rstrip("/"),
                "model": judge_spec.model,
                "rubric": judge_spec.rubric,
                "max_new_tokens": judge_spec.max_new_tokens,
            }
        elif judge_spec:
            judge_version, judge_path = self._model(judge_spec.model)
            judge_label = f"{judge_version.model.name}@{judge_version.number}"
            judge_identity = {
                "code": code,
                "namespace": self.namespace,
                "model": version_identity(judge_version),
                "rubric": judge_spec.rubric,
                "max_new_tokens": judge_spec.max_new_tokens,
                "mode": judge_spec.mode,
            }
        return judge_label, judge_identity, judge_path

    def _add_battles(
        self,
        name: str,
        contenders: list[Contender],
        chosen: list[Prompt],
        keys: dict[tuple[str, str], str],
        judge_identity: dict[str, Any] | None,
    ) -> list[int]:
        """Record a battle per pair and prompt (an existing one is found by its key); their ids."""
        store = self.store
        battle_ids: list[int] = []
        for a, b in combinations(contenders, 2):
            for prompt in chosen:
                key_a, key_b = keys[(a.label, prompt.id)], keys[(b.label, prompt.id)]
                battle_ids.append(
                    store.add_battle(
                        name,
                        battle_key(prompt, key_a, key_b, judge_identity),
                        model_a=a.label,
                        model_b=b.label,
                        prompt=prompt.text,
                        question_id=prompt.id,
                        answer_a=key_a,
                        answer_b=key_b,
                        extra=(
                            {"reference": reference_extra(prompt.reference)}
                            if prompt.reference is not None
                            else None
                        ),
                    )
                )
        return battle_ids

    def _answer(
        self,
        name: str,
        contenders: list[Contender],
        prompts: list[Prompt],
        generation: dict[str, Any],
        keys: dict[tuple[str, str], str],
    ) -> tuple[int, dict[str, EndpointUsage]]:
        """Answer what is not stored; (answers generated, each endpoint contestant's usage)."""
        store = self.store
        generated = 0
        usage_path = self.registry.paths.arena(name) / "endpoint-usage.json"
        usage: dict[str, dict[str, Any]] = (
            json.loads(usage_path.read_text()) if usage_path.is_file() else {}
        )
        counts: dict[str, tuple[int, int]] = {}
        for contender in contenders:
            missing = [p for p in prompts if store.answer(keys[(contender.label, p.id)]) is None]
            if not missing:
                continue
            self.console.print(f"  answering {len(missing)} prompt(s) with {contender.label}")
            report = lambda text: self.console.print(f"    {text}")  # noqa: E731
            if contender.endpoint is not None:
                call = contender.endpoint
                client = ChatEndpoint(
                    call.base_url,
                    call.model,
                    api_key_env=call.key_env,
                    retries=call.retries,
                    timeout_s=call.timeout_s,
                    what=f"endpoint of contestant '{contender.label}'",
                    fields=call.field,
                    check=(
                        f"Deployment/{call.model}: is it running, and is its key variable "
                        f"{call.key_env} set here?"
                        if call.serves
                        else None
                    ),
                )
                replies = endpoint_answers(
                    client, [p.text for p in missing], generation, call.concurrency, report
                )
                counts[contender.label] = (client.requests, client.retried)
                texts = [reply.text for reply in replies]
                for prompt, reply in zip(missing, replies, strict=True):
                    usage[keys[(contender.label, prompt.id)]] = {
                        "latency_s": round(reply.latency_s, 6),
                        "prompt_tokens": reply.prompt_tokens,
                        "completion_tokens": reply.completion_tokens,
                    }
                usage_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = usage_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(usage, indent=1, sort_keys=True) + "\n")
                tmp.replace(usage_path)
            else:
                assert contender.path is not None
                texts = generate_answers(
                    contender.path, [p.text for p in missing], generation, report=report
                )
            for prompt, text in zip(missing, texts, strict=True):
                store.put_answer(keys[(contender.label, prompt.id)], contender.label, text)
            generated += len(missing)
        endpoints = {
            c.label: endpoint_usage(
                c.endpoint,
                {**generation, "concurrency": c.endpoint.concurrency},
                [usage[k] for p in prompts if (k := keys[(c.label, p.id)]) in usage],
                *counts.get(c.label, (0, 0)),
            )
            for c in contenders
            if c.endpoint is not None
        }
        return generated, endpoints

    def _judge(
        self,
        store: ArenaStore,
        battle_ids: list[int],
        judge_label: str,
        judge_spec: ArenaJudge | MetricJudge | EndpointJudge,
        judge_path: Path | None,
    ) -> tuple[int, int, int, int]:
        """Judge the battles this judge has not; (judged, unparseable verdicts, requests to
        an endpoint judge, retries among them)."""
        todo = [
            b
            for b in store.by_ids(battle_ids)
            if not any(v.voter_kind == "judge" and v.voter_id == judge_label for v in b.votes)
        ]
        if not todo:
            return 0, 0, 0, 0
        self.console.print(f"  judging {len(todo)} battle(s) in both orders with {judge_label}")
        judge: PairwiseJudge | MetricJudgeRunner | EndpointJudgeRunner
        if isinstance(judge_spec, MetricJudge):
            judge = MetricJudgeRunner(judge_spec.metric, judge_spec.tie_band)
        elif isinstance(judge_spec, EndpointJudge):
            judge = EndpointJudgeRunner(
                judge_spec.base_url,
                judge_spec.model,
                judge_spec.rubric,
                api_key_env=judge_spec.api_key.env if judge_spec.api_key else None,
                max_new_tokens=judge_spec.max_new_tokens,
                retries=judge_spec.retries,
                timeout_s=judge_spec.timeout_s,
            )
        else:
            assert judge_path is not None
            judge = PairwiseJudge(
                judge_path,
                judge_spec.rubric,
                judge_spec.max_new_tokens,
                mode=judge_spec.mode,
            )
        unparseable = 0
        for number, battle in enumerate(todo, 1):
            judged = judge_battle(
                judge,
                battle.prompt or "",
                battle.answer_a or "",
                battle.answer_b or "",
                reference=reference_of(battle),
            )
            unparseable += judged.unparseable
            store.add_vote(
                battle.id,
                voter_kind="judge",
                voter_id=judge_label,
                winner=judged.winner,
                position="ab+ba",
                detail={"verdicts": judged.verdicts},
            )
            if number % 10 == 0 or number == len(todo):
                self.console.print(f"    judged {number}/{len(todo)}")
        requests = retried = 0
        if isinstance(judge, EndpointJudgeRunner):
            requests, retried = judge.requests, judge.retried
            self.console.print(
                f"    {requests} request(s) to the judge endpoint, {retried} of them retries"
            )
        return len(todo), unparseable, requests, retried

    def boards(
        self, spec: ArenaSpec, battles: list[BattleRecord], judge: bool = True
    ) -> dict[str, Leaderboard]:
        """Leaderboards of all, judge and human votes; `judge=False` leaves the judge's votes
        out of 'all' (the 'judge' board still shows them, for comparison)."""
        from runners.arena.ratings import leaderboard

        boot = spec.bootstrap
        return {
            voters: leaderboard(
                votes_of(battles, voters, human=spec.human_votes, judge=judge or voters == "judge"),
                rounds=boot.rounds,
                confidence=boot.confidence,
                seed=boot.seed,
            )
            for voters in ("all", "judge", "human")
        }

    def gates(
        self,
        spec: ArenaSpec,
        contenders: list[Contender],
        battles: list[BattleRecord],
        judge: bool = True,
    ) -> dict[str, GateVerdict]:
        from runners.arena.ratings import rating_difference

        labels = {c.ref: c.label for c in contenders}
        boot = spec.bootstrap
        out: dict[str, GateVerdict] = {}
        for gate in spec.gates:
            candidate, baseline = labels[gate.candidate], labels[gate.baseline]
            # 'task/metric rule' like an evaluation's gates, so reports and statuses read both
            name = f"rating/{gate.candidate} not_worse_than {gate.baseline}"
            votes = votes_of(battles, gate.voters, human=spec.human_votes, judge=judge)
            pair = [v for v in votes if {v.model_a, v.model_b} == {candidate, baseline}]
            if not pair:
                why = "" if judge else " (judge votes do not count: judge.require_agreement)"
                out[name] = GateVerdict(
                    passed=False,
                    detail=f"no counted votes between {candidate} and {baseline}{why}",
                )
                continue
            estimate, lower, upper = rating_difference(
                votes,
                candidate,
                baseline,
                rounds=boot.rounds,
                confidence=boot.confidence,
                seed=boot.seed,
            )
            margin = gate.margin
            out[name] = GateVerdict(
                passed=lower > margin,
                detail=f"rating difference {estimate:+.0f} [{lower:+.0f}, {upper:+.0f}], "
                f"lower bound must exceed {margin:+.0f}",
            )
        return out

    def save(self, name: str, result: ArenaResult) -> Path:
        folder = self.registry.paths.arena(name)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "leaderboard.json"
        document = {
            "arena": name,
            "models": {c.ref: c.label for c in result.contenders},
            "battles": len(result.battles),
            "leaderboards": {k: v.as_dict() for k, v in result.boards.items()},
            "gates": {k: v.model_dump() for k, v in result.gates.items()},
            "judge": None if result.judge is None else result.judge.model_dump(mode="json"),
        }
        if result.endpoints:
            document["endpoints"] = {
                label: usage.model_dump(mode="json") for label, usage in result.endpoints.items()
            }
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
        tmp.replace(target)
        return target


def endpoint_usage(
    call: EndpointCall,
    settings: dict[str, Any],
    answers: list[dict[str, Any]],
    requests: int = 0,
    retries: int = 0,
) -> EndpointUsage:
    """An endpoint contestant's identity, settings and the latency and token usage recorded
    with its answers to this arena's prompts."""
    latencies = sorted(float(a["latency_s"]) for a in answers if a.get("latency_s") is not None)

    def total(field_name: str) -> int | None:
        values = [a.get(field_name) for a in answers]
        known = [v for v in values if isinstance(v, int)]
        return sum(known) if known else None

    return EndpointUsage(
        endpoint=call.base_url.rstrip("/"),
        model=call.model,
        settings={k: v for k, v in settings.items() if k not in ("code", "namespace")}
        | ({"serves": call.serves} if call.serves else {}),
        answers=len(answers),
        latency_s=round(sum(latencies) / len(latencies), 4) if latencies else None,
        latency_p95_s=(
            round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 4)
            if latencies
            else None
        ),
        prompt_tokens=total("prompt_tokens"),
        completion_tokens=total("completion_tokens"),
        requests=requests,
        retries=retries,
    )


def import_battles(registry: Any, arena: str, battles: list[Any]) -> tuple[int, int]:
    """Store imported battles (runners.arena.fastchat.ImportedBattle) with their votes;
    a row seen before (same content) is not stored twice. Returns (added, already there)."""
    store = ArenaStore(registry)
    added = known = 0
    for battle in battles:
        vote = battle.vote
        content = {
            "model_a": vote.model_a,
            "model_b": vote.model_b,
            "winner": vote.winner,
            "voter": [vote.voter_kind, vote.voter_id],
            "tstamp": vote.tstamp,
            "question_id": vote.question_id,
            "prompt": battle.prompt,
            "answers": [battle.answer_a, battle.answer_b],
            "extra": battle.extra,
        }
        key = (
            "sha256:"
            + hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()
        )
        answer_keys = []
        for model, text in ((vote.model_a, battle.answer_a), (vote.model_b, battle.answer_b)):
            if text is None:
                answer_keys.append(None)
                continue
            answer = (
                "sha256:"
                + hashlib.sha256(
                    json.dumps(["import", model, battle.prompt, text]).encode()
                ).hexdigest()
            )
            store.put_answer(answer, model, text)
            answer_keys.append(answer)
        battle_id = store.add_battle(
            arena,
            key,
            model_a=vote.model_a,
            model_b=vote.model_b,
            prompt=battle.prompt,
            question_id=vote.question_id,
            answer_a=answer_keys[0],
            answer_b=answer_keys[1],
            source="import",
            extra=dict(battle.extra),
        )
        record = store.battle(battle_id)
        if record is not None and record.votes:
            known += 1
            continue
        store.add_vote(
            battle_id,
            voter_kind=vote.voter_kind,
            voter_id=vote.voter_id or "import",
            winner=vote.winner,
            position=vote.position,
            tstamp=vote.tstamp,
        )
        added += 1
    return added, known
