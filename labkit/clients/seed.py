"""Demo data for the lab: users with known passwords, their plans, and catalog titles.

Idempotent: seeding twice leaves the same users, plans and titles. Everything goes through
the services' internal routes (``X-Service-Token``), never straight into the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from labkit.core.console import progress
from labkit.core.errors import LabError

if TYPE_CHECKING:
    from labkit.targets import Target

TIMEOUT = 15.0


@dataclass(frozen=True)
class DemoUser:
    email: str
    password: str
    display_name: str
    plan: str | None


@dataclass(frozen=True)
class DemoTitle:
    id: str
    name: str
    description: str
    duration_s: float
    tier: str


USERS = (
    DemoUser("alice@example.com", "alice-watches-everything", "Alice", "premium"),
    DemoUser("bob@example.com", "bob-likes-basics", "Bob", "basic"),
    DemoUser("carol@example.com", "carol-is-free", "Carol", "free"),
    DemoUser("dave@example.com", "dave-has-no-plan", "Dave", None),
)

TITLES = (
    DemoTitle("lab-clock", "Lab Clock", "A timecoded test clip: a clock, a frame counter and a tone.", 30, "free"),
    DemoTitle("city-timelapse", "City Timelapse", "A day in a city, sped up.", 600, "basic"),
    DemoTitle("ocean-documentary", "Ocean Documentary", "Life under the waves, in four parts.", 3000, "premium"),
    DemoTitle("cooking-basics", "Cooking Basics", "Knife skills, stocks and sauces.", 1800, "basic"),
    DemoTitle("space-launch", "Space Launch", "A rocket launch from countdown to orbit.", 900, "premium"),
)


def demo_user(name: str) -> DemoUser:
    """A seeded user by e-mail or by first name (``alice``); ConfigError naming the known ones otherwise."""
    from labkit.core.errors import ConfigError

    for user in USERS:
        if name.lower() in (user.email, user.email.split("@")[0]):
            return user
    known = ", ".join(u.email.split("@")[0] for u in USERS)
    raise ConfigError(f"no demo user {name!r}", hint=f"one of: {known} (created by `ottlab seed`)")


def seed(urls: dict[str, str], service_token: str) -> dict[str, int]:
    """Create the demo users, subscriptions and titles through each service's URL in ``urls``."""
    headers = {"X-Service-Token": service_token}
    with httpx.Client(timeout=TIMEOUT, headers=headers) as http:
        for user in USERS:
            created = _ok(http.post(f"{urls['auth']}/admin/users", json={
                "email": user.email, "password": user.password, "display_name": user.display_name}))
            if user.plan:
                _ok(http.put(f"{urls['subscription']}/admin/subscriptions/{created['id']}", json={"plan": user.plan}))
            progress(f"  user {user.email} ({user.plan or 'no plan'})")
        for title in TITLES:
            _ok(http.put(f"{urls['catalog']}/titles/{title.id}", json={
                "name": title.name, "description": title.description,
                "duration_s": title.duration_s, "tier": title.tier}))
            progress(f"  title {title.id} ({title.tier})")
    return {"users": len(USERS), "titles": len(TITLES)}


def seed_target(target: Target) -> dict[str, int]:
    """:func:`seed` through ``target``'s own service endpoints and service token (what ``ottlab seed`` does)."""
    from labkit.platform.layers import apis

    return seed({s.name: target.endpoint(s.name) for s in apis.SERVICES}, target.service_token())


def _ok(response: httpx.Response) -> dict[str, object]:
    if response.status_code >= 400:
        raise LabError(
            f"seeding failed: {response.request.method} {response.request.url} -> {response.status_code} "
            f"{response.text[:300]}",
            hint="check the APIs with `ottlab status` and their logs with `ottlab logs <service>`",
        )
    body: dict[str, object] = response.json() if response.content else {}
    return body
