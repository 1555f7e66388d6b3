from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="mailaccess:settings", permanent=False)),
    path("accounts/", include("accounts.urls")),
    path("settings/", include("mailaccess.urls")),
    path("admin/", admin.site.urls),
]
