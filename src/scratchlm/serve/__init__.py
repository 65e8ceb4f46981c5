"""``scratchlm serve``: the continuous-batching engine (``serve.engine``, torch only), the
OpenAI-compatible HTTP app and the web chat page. Import the modules themselves: this
package imports nothing, so the engine never pulls in the HTTP extras."""
