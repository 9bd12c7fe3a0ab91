"""The HTML the server writes: the sign-in page, and each page's shell.

Each page's content is drawn by its script (``static/pages/<page>.js``) from
the admin API; the server adds only the navigation and the CSRF token.
Everything interpolated is escaped.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape


@dataclass(frozen=True)
class Page:
    name: str  # its script: static/pages/<name>.js
    title: str
    path: str


PAGES = (
    Page("overview", "Overview", "/admin/"),
    Page("users", "Users", "/admin/users"),
    Page("adapters", "Adapters", "/admin/adapters"),
    Page("jobs", "Jobs", "/admin/jobs"),
    Page("router", "Router", "/admin/router"),
)

# Scripts only from this server; the charts' inline SVG styles need 'unsafe-inline'
# for styles, which cannot run code.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    # The pages carry a CSRF token: no cache may keep them.
    "Cache-Control": "no-store",
}


def page_html(page: Page, *, csrf_token: str) -> str:
    token = escape(csrf_token)
    links = "\n".join(
        f'<a href="{p.path}"{" aria-current=page" if p == page else ""}>{escape(p.title)}</a>'
        for p in PAGES
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{token}">
<title>Tailor · {escape(page.title)}</title>
<link rel="icon" href="/admin/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/admin/static/dashboard.css">
</head>
<body data-page="{page.name}">
<header class="topbar">
<a class="brand" href="/admin/">Tailor</a>
<nav>
{links}
<a href="/docs" target="_blank" rel="noopener">API docs</a>
</nav>
<form method="post" action="/admin/logout">
<input type="hidden" name="csrf_token" value="{token}">
<button type="submit">Sign out</button>
</form>
</header>
<div id="notice" data-testid="notice"></div>
<main id="app"></main>
<script type="module" src="/admin/static/pages/{page.name}.js"></script>
</body>
</html>
"""


def login_html(*, next_path: str, error: str | None = None) -> str:
    message = f'<p class="notice error" role="alert">{escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Tailor · Sign in</title>
<link rel="icon" href="/admin/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/admin/static/dashboard.css">
</head>
<body class="login">
<main class="login-card">
<h1>Tailor admin</h1>
{message}
<form method="post" action="/admin/login">
<label for="key">Admin key</label>
<input id="key" name="key" type="password" autocomplete="current-password" required autofocus>
<input type="hidden" name="next" value="{escape(next_path)}">
<button type="submit">Sign in</button>
</form>
<p class="hint">The key is sent once; a session cookie carries the sign-in after that.</p>
</main>
</body>
</html>
"""
