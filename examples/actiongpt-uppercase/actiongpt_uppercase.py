"""A complete third-party actiongpt plugin (see docs/writing-a-plugin.md).

It adds a backend, a template and an aggregator, and wraps the `clean_descriptions` hook
(`wrapper=True`).
Install it with `pip install -e examples/actiongpt-uppercase`; `actiongpt plugins` then lists it.
"""
from actiongpt_plugin import hookimpl
from actiongpt_plugin.backends.base import Backend, Completion
from actiongpt_plugin.templates import Template


class EchoBackend(Backend):
    """Writes k descriptions without any model: handy for wiring checks."""

    name = "echo"
    model = "echo-1"
    batch_size = 64

    async def complete(self, request, k, params):
        texts = [f"The person performs {request.phrase} with the whole body, take {i + 1}." for i in range(k)]
        return Completion(texts=texts, raw={"echo": request.prompt.text}, requests=1)


@hookimpl
def register_backends(register):
    register("echo", lambda cfg: EchoBackend())


@hookimpl
def register_templates(register):
    register(Template(name="terse", version="1", text="Describe the body movement of {phrase} in one sentence."))


@hookimpl
def register_aggregators(register):
    register("first", lambda features, mask, k: (features[::k], None if mask is None else mask[::k]))


@hookimpl(wrapper=True)
def clean_descriptions(phrase, texts, config):
    # A new-style wrapper: `yield` runs the other implementations (the built-in cleaning) and gives
    # their result; what the wrapper returns becomes the hook's result.
    cleaned = yield
    return [t.upper() for t in cleaned]
