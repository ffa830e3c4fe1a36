"""Ray Serve: the retriever + generator graph behind an OpenAI-compatible API (see app.build_app)."""

# pymilvus configures logging when it is first imported (logging.config.dictConfig), which closes
# every handler the process has: in a Serve replica that imported it on its first Milvus call, the
# replica's log file then got nothing more. Imported with this package — when a replica unpickles its
# deployment, before Serve sets up the replica's logger — it configures logging first.
import pymilvus  # noqa: E402,F401
