"""The console's admin site: the product's name, and links to its pages beside the models.

Django's index and sidebar list models only; a ModelAdmin may add pages of its own to its
app's entry with `console_links(request)`, a list of (name, url) the user may open. (Not in
taskqueue.admin: that package registers on this site, so it must not be its import.)
"""

from typing import Any

from django.apps import apps
from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse


class ConsoleSite(admin.AdminSite):
    site_header = "taskqueue-ops console"
    site_title = "taskqueue-ops"
    index_title = "Operations"

    def get_app_list(self, request: HttpRequest, app_label: str | None = None) -> list[dict]:
        app_list = super().get_app_list(request, app_label)
        by_label = {app["app_label"]: app for app in app_list}
        for model in apps.get_models():
            label = model._meta.app_label
            if (app_label and label != app_label) or not self.is_registered(model):
                continue
            links = getattr(self.get_model_admin(model), "console_links", None)
            for name, url in reversed(links(request) if links else []):
                if label not in by_label:
                    by_label[label] = self._app_entry(label)
                    app_list.append(by_label[label])
                by_label[label]["models"].insert(0, _link_entry(name, url))
        app_list.sort(key=lambda app: app["name"].lower())
        return app_list

    def _app_entry(self, label: str) -> dict[str, Any]:
        """An app's entry for a user who may open its pages but none of its models."""
        url = reverse("admin:app_list", kwargs={"app_label": label}, current_app=self.name)
        return {
            "name": apps.get_app_config(label).verbose_name,
            "app_label": label,
            "app_url": url,
            "has_module_perms": True,
            "models": [],
        }


def _link_entry(name: str, url: str) -> dict[str, Any]:
    """A page in the shape of a model entry, as admin/app_list.html renders them."""
    return {
        "name": name,
        "object_name": name.replace(" ", ""),
        "perms": {"view": True},
        "admin_url": url,
        "add_url": None,
        "view_only": True,
    }
