"""The links an alert carries (``[links]``): its dashboard filtered to its cohort and the
back-link Alertmanager shows as the alert's source, from config templates.

A template names its values as ``$name`` or ``${name}`` (:data:`detector.config.LINK_FIELDS`:
the alert's id, status, severity and signal, its cohort fields, empty when the cohort lacks
one, and ``from_ms``/``to_ms``, an hour either side of it in epoch milliseconds, as Grafana's
``from=`` and ``to=`` take them). Every value is percent-encoded whole, so a cohort value
cannot add a parameter or change the path. The templates were checked when the config loaded.

>>> from detector.config import Links
>>> links = Links(dashboard_url="https://g.example/d/x?var-tenant=${tenant}&from=${from_ms}")
>>> dashboard_url(links, {"id": "a-1", "tenant": "acme & co"}, 7200.0, 7260.0)
'https://g.example/d/x?var-tenant=acme%20%26%20co&from=3600000'
"""

from __future__ import annotations

import urllib.parse
from string import Template

from detector.config import COHORT_FIELDS, Links

__all__ = ["dashboard_url", "generator_url"]

#: An hour either side of the alert: the baseline before it and what came after.
_MARGIN_S = 3600.0


def _values(fields: dict[str, str], starts_at: float, latest: float) -> dict[str, str]:
    v = {k: urllib.parse.quote(x, safe="") for k, x in fields.items()}
    for k in COHORT_FIELDS:
        v.setdefault(k, "")
    v["from_ms"] = str(int((starts_at - _MARGIN_S) * 1000))
    v["to_ms"] = str(int((latest + _MARGIN_S) * 1000))
    return v


def _render(template: str | None, fields: dict[str, str], starts_at: float,
            latest: float) -> str | None:
    if template is None:
        return None
    return Template(template).substitute(_values(fields, starts_at, latest))


def dashboard_url(links: Links, fields: dict[str, str], starts_at: float, latest: float
                  ) -> str | None:
    """The dashboard link for an alert with ``fields`` (id, status, severity, signal and its
    cohort's), started at ``starts_at`` and last seen at ``latest`` (epoch seconds)."""
    return _render(links.dashboard_url, fields, starts_at, latest)


def generator_url(links: Links, fields: dict[str, str], starts_at: float, latest: float
                  ) -> str | None:
    """The back-link for the same alert (Alertmanager's ``generatorURL``)."""
    return _render(links.generator_url, fields, starts_at, latest)
