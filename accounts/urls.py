from django.urls import path

from accounts import views

app_name = "accounts"
urlpatterns = [
    path("login/", views.sign_in, name="login"),
    path("login/code/", views.sign_in_code, name="sign_in_code"),
    path("logout/", views.sign_out, name="logout"),
    path("password/", views.change_password, name="change_password"),
    path("confirm/", views.sudo_confirm, name="sudo"),
    path("security/", views.security, name="security"),
    path("security/two-factor/start/", views.two_factor_start, name="two_factor_start"),
    path("security/two-factor/setup/", views.two_factor_setup, name="two_factor_setup"),
    path("security/two-factor/off/", views.two_factor_disable, name="two_factor_disable"),
    path("security/recovery-codes/", views.recovery_codes, name="recovery_codes"),
]
