"""URLs for the web tests: the admin and kvstate's pages, as a host project wires them."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("kvstate/", include("kvstate.urls")),
]
