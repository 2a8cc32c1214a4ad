"""The one model of what the site lets through (read from site.json): the lab's expectations and
the diff's reachability changes are decided by the same code."""
