"""The Go guest language (`language = "go"` in okra.toml; `okra init NAME --lang go`).

The Go SDK (`sdk/`, import path `okra.dev/sdk/okra`) and the code generator need only the
Go standard library, so builds run offline; docs/go.md is the guide.
"""

from okra_core.hookspecs import hookimpl


@hookimpl
def register_languages(register):
    from okra_plugins.lang_go._language import GoLanguage

    register(GoLanguage())
