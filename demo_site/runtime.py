"""The workbench's XBlock runtime: kvstate's minimal runtime, with URLs a browser can reach.

Blocks render with their own HTML, CSS and JavaScript; the page loads xblock-sdk's XBlock
JavaScript runtime (``workbench/js/runtime/1.js``, served as static files), which calls the
blocks' handlers at ``/handler/<usage key>/<handler>/<suffix>``. User-scope fields come from
:meth:`kvstate.runtime.StudentDataProvider.for_request`: a signed-in learner's from the
database, an anonymous visitor's from ``KVSTATE_ANONYMOUS_CACHE``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from django.http import HttpRequest
from django.templatetags.static import static
from django.urls import reverse
from web_fragments.fragment import Fragment
from xblock.core import XBlock

from demo_site.unit import WORKBENCH_UNIT, Unit
from kvstate.runtime import StudentDataProvider
from kvstate.testing.runtime import AuthoredContent, MinimalRuntime

_CONTENT: dict[Unit, AuthoredContent] = {}


class WorkbenchRuntime(MinimalRuntime):
    """Run the unit's blocks for one browser request."""

    def handler_url(
        self,
        block: XBlock,
        handler_name: str,
        suffix: str = "",
        query: str = "",
        thirdparty: bool = False,
    ) -> str:
        url = reverse(
            "demo_site:handler",
            kwargs={"usage_key": str(block.scope_ids.usage_id), "handler": handler_name},
        )
        url += quote(suffix)
        return f"{url}?{query}" if query else url

    def resource_url(self, resource: str) -> str:
        return static(f"workbench/{resource}")

    def local_resource_url(self, block: XBlock, uri: str) -> str:
        return reverse(
            "demo_site:resource", kwargs={"block_type": block.scope_ids.block_type, "uri": uri}
        )

    def _wrap_ele(self, block: XBlock, view: str, frag: Fragment, extra_data: Any = None) -> Any:
        """Wrap as XBlock does, and add jQuery and xblock-sdk's JavaScript runtime."""
        wrapped = super()._wrap_ele(block, view, frag, extra_data)
        wrapped.add_resource_url(
            self.resource_url("js/vendor/jquery.min.js"), "application/javascript", "head"
        )
        wrapped.add_javascript_url(self.resource_url("js/vendor/jquery-migrate.min.js"))
        wrapped.add_javascript_url(self.resource_url("js/vendor/jquery.cookie.js"))
        if frag.js_init_fn:
            wrapped.add_javascript_url(self.resource_url(f"js/runtime/{frag.js_init_version}.js"))
        return wrapped


def runtime_for(request: HttpRequest, unit: Unit = WORKBENCH_UNIT) -> WorkbenchRuntime:
    """Return a fresh runtime for ``request``'s user (or anonymous visitor)."""
    content = _CONTENT.get(unit)
    if content is None:
        content = _CONTENT[unit] = unit.authored_content()
    return WorkbenchRuntime(content, StudentDataProvider.for_request(request))
