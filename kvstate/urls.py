"""URLs of kvstate's staff pages: ``path("kvstate/", include("kvstate.urls"))``.

``kvstate:history`` takes ``username`` and ``usage_key``. The usage key comes last and may
contain slashes (old ``i4x://`` keys), so it is matched as a path.
"""

from __future__ import annotations

from django.urls import path

from kvstate import views

app_name = "kvstate"

urlpatterns = [
    path(
        "history/<str:username>/<path:usage_key>",
        views.submission_history,
        name="history",
    ),
]
