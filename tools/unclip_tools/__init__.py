"""Model tooling for the unCLIP serving pipeline.

Export of diffusers/Karlo pipelines into the project's model repository format, the tiny
"shapes" model (renderer, training, export, quality report) and a reference sampler over the
ONNX graphs. Never imported by the serving path.
"""


class UserError(Exception):
    """A mistake in what the user asked for (missing file, bad folder, unknown word).

    The CLI prints the message alone, without a traceback, and exits with status 2.
    """
