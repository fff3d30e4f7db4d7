"""Planning, addresses: the one immutable name of a resource (`Kind/name`, `Kind/name/run`).

Every module that needs a resource's kind, name or run asks an `Address`; none splits the
string form by hand. Terraform's internal/addrs is the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import total_ordering

from controller.plan.kinds import KINDS, RUN_KINDS


class AddressError(ValueError):
    """Text that is not a resource address; the message says what one looks like."""


@total_ordering
@dataclass(frozen=True)
class Address:
    """`Model/base`, `Dataset/faq`, `Experiment/support-lora/default`, `Evaluation/x/control`.

    An Experiment or Evaluation address without a run (`Experiment/support-lora`) names the
    whole experiment: it `contains` every run's address. An address equals and hashes as its
    text, so the lock file's and the desired state's maps (keyed by text, as the files are)
    find a resource by its Address.
    """

    kind: str
    name: str
    run: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise AddressError(f"unknown kind '{self.kind}' (one of {', '.join(KINDS)})")
        if not self.name or "/" in self.name:
            raise AddressError(f"'{self.name}' is not a resource name")
        if self.run is not None and self.kind not in RUN_KINDS:
            raise AddressError(f"a {self.kind} address looks like '{self.kind}/<name>'")
        if self.run is not None and (not self.run or "/" in self.run):
            raise AddressError(f"'{self.run}' is not a run name")

    @classmethod
    def parse(cls, text: str) -> Address:
        """The address `text` spells; AddressError naming the expected shape otherwise."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise AddressError(
                f"'{text}' is not a resource address: addresses look like 'Dataset/<name>' "
                "or 'Experiment/<name>/<run>'"
            )
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def try_parse(cls, text: str) -> Address | None:
        """The address `text` spells, or None (a file input key such as `file:data/x.jsonl`)."""
        try:
            return cls.parse(text)
        except AddressError:
            return None

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Address):
            return self._key() == other._key()
        if isinstance(other, str):
            return str(self) == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Address):
            return NotImplemented
        return self._key() < other._key()

    def _key(self) -> tuple[str, str, str]:
        return (self.kind, self.name, self.run or "")

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}" + (f"/{self.run}" if self.run is not None else "")

    @property
    def experiment(self) -> str:
        """The Experiment a run or an evaluation belongs to (its name)."""
        if self.kind not in RUN_KINDS:
            raise AddressError(f"{self} belongs to no experiment")
        return self.name

    def sibling(self, kind: str) -> Address:
        """The same name (and run) under another kind: a run's Evaluation, an evaluation's run."""
        return Address(kind, self.name, self.run if kind in RUN_KINDS else None)

    def contains(self, other: Address) -> bool:
        """`Experiment/x` (written as a name without run) covers its runs `Experiment/x/<run>`."""
        return self == other or (
            self.kind == other.kind and self.name == other.name and self.run is None
        )
