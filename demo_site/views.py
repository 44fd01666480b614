"""The workbench's pages: the unit, the learner picker, block handlers and block resources."""

from __future__ import annotations

import mimetypes

import webob
from django.contrib.auth import get_user_model, login, logout
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
)
from django.shortcuts import redirect, render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_POST
from opaque_keys import InvalidKeyError
from opaque_keys.edx.keys import UsageKey
from web_fragments.fragment import Fragment
from xblock.core import XBlock
from xblock.exceptions import DisallowedFileError, NoSuchHandlerError, NoSuchUsage
from xblock.plugin import PluginMissingError

from demo_site.runtime import runtime_for
from demo_site.unit import LEARNERS, STAFF_USERNAME, TITLES, WORKBENCH_UNIT

ANONYMOUS = "anonymous"


@ensure_csrf_cookie
def unit(request: HttpRequest) -> HttpResponse:
    """Render the unit's blocks for the current learner, with the learner picker."""
    runtime = runtime_for(request)
    blocks = [runtime.get_block(key) for key in WORKBENCH_UNIT.blocks]
    runtime.student_data.prefetch(blocks)
    page = Fragment()
    shown = []
    for block in blocks:
        fragment = runtime.render(block, "student_view")
        page.add_fragment_resources(fragment)
        usage_key = block.scope_ids.usage_id
        shown.append(
            {
                "title": TITLES[usage_key.block_id],
                "usage_key": usage_key,
                "html": fragment.body_html(),
                "history": _history_links(request, usage_key),
            }
        )
    user = request.user
    return render(
        request,
        "demo_site/unit.html",
        {
            "blocks": shown,
            "head_html": page.head_html(),
            "foot_html": page.foot_html(),
            "current": user.get_username() if user.is_authenticated else ANONYMOUS,
            "choices": [*LEARNERS, STAFF_USERNAME, ANONYMOUS],
            "course": WORKBENCH_UNIT.course,
        },
    )


@require_POST
def choose_learner(request: HttpRequest) -> HttpResponse:
    """Sign in as one of the seeded learners (no password: a demo), or sign out."""
    name = request.POST.get("learner", "")
    if name == ANONYMOUS:
        logout(request)
        return redirect("demo_site:unit")
    if name not in (*LEARNERS, STAFF_USERNAME):
        return HttpResponseBadRequest(f"learner={name!r}: pick one of the workbench's learners")
    user = get_user_model()._default_manager.filter(username=name).first()
    if user is None:
        return HttpResponseBadRequest(f"there is no user {name!r}: run ./demo serve to seed them")
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    return redirect("demo_site:unit")


def handler(request: HttpRequest, usage_key: str, handler: str, suffix: str = "") -> HttpResponse:
    """Call a block's handler as its JavaScript asked, for the current learner."""
    try:
        key = UsageKey.from_string(usage_key)
        runtime = runtime_for(request)
        block = runtime.get_block(key)
    except (InvalidKeyError, NoSuchUsage):
        raise Http404(f"no block {usage_key!r} in the workbench's unit") from None
    try:
        response = runtime.handle(block, handler, _webob_request(request), suffix)
    except NoSuchHandlerError:
        raise Http404(f"block {usage_key!r} has no handler {handler!r}") from None
    return HttpResponse(
        response.body, status=response.status_code, content_type=response.content_type
    )


def resource(request: HttpRequest, block_type: str, uri: str) -> FileResponse:
    """Serve a file packaged with a block class (its public JavaScript, CSS, images)."""
    try:
        block_class = XBlock.load_class(block_type)
        stream = block_class.open_local_resource(uri)
    except (PluginMissingError, DisallowedFileError, OSError):
        raise Http404(f"{block_type!r} has no public resource {uri!r}") from None
    content_type = mimetypes.guess_type(uri)[0] or "application/octet-stream"
    return FileResponse(stream, content_type=content_type)


def _webob_request(request: HttpRequest) -> webob.Request:
    """Return the WebOb request XBlock handlers take: method, query, content type and body."""
    return webob.Request.blank(
        request.get_full_path(),
        method=request.method,
        body=request.body,
        content_type=request.META.get("CONTENT_TYPE", ""),
    )


def _history_links(request: HttpRequest, usage_key: UsageKey) -> list[tuple[str, str]]:
    """Return (learner, URL) of each learner's history of the block, for staff only."""
    if not request.user.is_staff:
        return []
    try:
        return [
            (name, reverse("kvstate:history", kwargs={"username": name, "usage_key": usage_key}))
            for name in LEARNERS
        ]
    except NoReverseMatch:
        return []
