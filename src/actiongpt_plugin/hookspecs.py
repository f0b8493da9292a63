"""The hooks a plugin can implement. Built-in parts implement them exactly as third parties do.

Registration hooks receive a ``register`` callable. Behaviour hooks are ``firstresult``: the
first plugin that returns something other than None wins; built-ins are ``trylast`` so any
third-party implementation takes precedence. A ``@hookimpl(wrapper=True)`` generator observes or
changes the result: ``result = yield`` gives what the other implementations returned, and what the
wrapper returns is the hook's result (docs/writing-a-plugin.md).
"""
import pluggy

hookspec = pluggy.HookspecMarker("actiongpt")
hookimpl = pluggy.HookimplMarker("actiongpt")


@hookspec
def register_backends(register):
    """register(name, factory, *, options=None, needs_key=False, key_env=None, auto=None, description="").

    ``factory(config) -> Backend`` (backends.base.Backend). ``options``: a dataclass of
    ``actiongpt_plugin.options.option`` fields, the config section ``<name>.*`` (``--set name.key=...``,
    validated, masked in dumps where ``secret``). ``needs_key``/``key_env``: an API key is required,
    from ``<name>.api_key`` or that environment variable. ``auto``: ``backend=auto`` picks the ready
    backend with the highest value (openai 10, embedded 0); None: never picked automatically.
    """


@hookspec
def register_templates(register):
    """register(template: templates.Template)."""


@hookspec
def register_aggregators(register):
    """register(name, aggregator): see aggregators.py for the aggregator interface."""


@hookspec
def register_adapters(register):
    """register(adapter_class): see adapters/base.py for the adapter interface."""


@hookspec
def register_commands(cli):
    """Add commands to the ``actiongpt`` command line: ``cli`` is its typer.Typer app.

    ``@cli.command()`` on a function adds ``actiongpt <name>``; actiongpt_plugin.cli offers the shared
    options and helpers the built-in commands use (the OpenAI Batch API command is added this way).
    """


@hookspec(firstresult=True)
def build_prompt(template, phrase, config):
    """Return a templates.Prompt for ``phrase`` (text for completions, messages for chat)."""


@hookspec(firstresult=True)
def query_llm(backend, requests, k, params):
    """Return an awaitable resolving to one backends.base.Completion per backends.base.Request."""


@hookspec(firstresult=True)
def clean_descriptions(phrase, texts, config, finish_reasons):
    """Return the usable descriptions among an LLM's raw ``texts`` (may be fewer than given).

    ``finish_reasons`` is parallel to ``texts`` ("stop", "length" when cut off by max_tokens, or None
    when the backend cannot tell); an implementation may leave it out of its signature.
    """


@hookspec(firstresult=True)
def select_descriptions(phrase, candidates, k, config):
    """Choose k of the cleaned, stored ``candidates`` (at least ``expand.oversample`` x k of them).

    Return the chosen descriptions, or None to let the next implementation decide (the built-in
    keeps the first k). Returning fewer than k makes the expander ask the LLM for more, within
    ``expand.attempts``. The relevance reranker (quality.py) plugs in here.
    """


@hookspec(firstresult=True)
def aggregate_embeddings(aggregator, features, mask, k):
    """Combine k description embeddings per phrase.

    ``features`` is [n*k, ...] (descriptions of phrase i at rows i*k..i*k+k-1); ``mask`` is
    [n*k, T] bool for token-level features or None for pooled ones. Return (features, mask)
    with n rows.
    """
