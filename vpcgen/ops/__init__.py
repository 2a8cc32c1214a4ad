"""Acting on a built tree: the daemons' checkers, deploy over SSH, scratch namespaces."""
