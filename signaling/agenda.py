"""The shared agenda of a session: pure state and the rules of who may change what.

Therapist and client set the agenda together; the therapist curates it (adds, edits,
reorders, ticks, removes, accepts proposals) and the client may propose items. Both see
the same list live.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from media import Role

MAX_ITEMS = 30
MAX_TEXT = 200
MAX_HOMEWORK = 2000


class AgendaError(ValueError):
    """A change that cannot be applied; the message is safe to show to the sender."""


@dataclass
class AgendaItem:
    id: int
    text: str
    done: bool = False
    proposed_by: Role = Role.THERAPIST
    accepted: bool = True


@dataclass
class Agenda:
    items: list[AgendaItem] = field(default_factory=list)
    homework: str = ""
    next_id: int = 1

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Agenda:
        if not data:
            return cls()
        items = [
            AgendaItem(**{**item, "proposed_by": Role(item.get("proposed_by", Role.THERAPIST))})
            for item in data.get("items", [])
        ]
        next_id = int(data.get("next_id") or (max((i.id for i in items), default=0) + 1))
        return cls(items=items, homework=str(data.get("homework", "")), next_id=next_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "items": [asdict(i) for i in self.items],
            "homework": self.homework,
            "next_id": self.next_id,
        }

    def _find(self, item_id: int) -> AgendaItem:
        for item in self.items:
            if item.id == item_id:
                return item
        raise AgendaError("That agenda item no longer exists.")

    @staticmethod
    def _clean(text: str) -> str:
        cleaned = " ".join(text.split())
        if not cleaned:
            raise AgendaError("An agenda item needs some text.")
        if len(cleaned) > MAX_TEXT:
            raise AgendaError(f"Agenda items are limited to {MAX_TEXT} characters.")
        return cleaned

    def add(self, text: str, by: Role) -> AgendaItem:
        if len(self.items) >= MAX_ITEMS:
            raise AgendaError(f"The agenda holds at most {MAX_ITEMS} items.")
        item = AgendaItem(
            id=self.next_id, text=self._clean(text), proposed_by=by, accepted=by == Role.THERAPIST
        )
        self.next_id += 1
        self.items.append(item)
        return item

    def update(self, item_id: int, text: str | None, done: bool | None) -> None:
        item = self._find(item_id)
        if text is not None:
            item.text = self._clean(text)
        if done is not None:
            item.done = done

    def accept(self, item_id: int) -> None:
        self._find(item_id).accepted = True

    def remove(self, item_id: int) -> None:
        self.items.remove(self._find(item_id))

    def reorder(self, item_ids: list[int]) -> None:
        if sorted(item_ids) != sorted(i.id for i in self.items):
            raise AgendaError("Reordering must list every agenda item exactly once.")
        by_id = {i.id: i for i in self.items}
        self.items = [by_id[i] for i in item_ids]

    def set_homework(self, text: str) -> None:
        if len(text) > MAX_HOMEWORK:
            raise AgendaError(f"Homework is limited to {MAX_HOMEWORK} characters.")
        self.homework = text.strip()
