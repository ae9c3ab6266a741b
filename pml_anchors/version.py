"""The package version and the version of the plugin contract."""

__version__ = "0.1.0"
#: Version of the plugin contract (hook specs + :class:`~pml_anchors.MethodSpec` fields). Plugins may depend on
#: ``pml-anchors>=0.1,<0.2``; hooks added later must be implemented with ``optionalhook=True``.
PLUGIN_API_VERSION = "0.1"
