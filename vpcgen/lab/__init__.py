"""The lab: a built site running for real in network namespaces, and the rounds that prove it."""
