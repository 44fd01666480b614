"""The workbench's URLs: the unit at ``/``, the admin, and kvstate's staff pages."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from demo_site import views

workbench = (
    [
        path("", views.unit, name="unit"),
        path("learner/", views.choose_learner, name="choose_learner"),
        path("handler/<str:usage_key>/<str:handler>/", views.handler, name="handler"),
        path("handler/<str:usage_key>/<str:handler>/<path:suffix>", views.handler),
        path("resource/<str:block_type>/<path:uri>", views.resource, name="resource"),
    ],
    "demo_site",
)

urlpatterns = [
    path("", include(workbench)),
    path("admin/", admin.site.urls),
    # How a host project wires kvstate's submission-history page.
    path("kvstate/", include("kvstate.urls")),
]
