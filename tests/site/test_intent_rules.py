"""ACL rules are built without the frozen dataclass's __init__ (speed): they must still be exactly
the Rule that __init__ would build, every field set."""

from dataclasses import fields

from vpcgen.site.intent import Rule, _rule
from vpcgen.site.loader import Document


def test_a_rule_built_fast_is_the_rule_init_builds():
    doc = Document(kind="acl", file="acls/web.yaml", data=None)
    data = {"number": 20, "action": "deny", "traffic": "egress", "protocol": "udp", "ports": "5000-5009",
            "cidrs": ["10.0.0.0/8"]}
    fast = _rule(doc, ("rules", 1), data)
    slow = Rule(number=20, action="deny", traffic="egress", protocol="udp", ports=(5000, 5009), icmp_type=None,
                icmp_code=None, cidrs=("10.0.0.0/8",), src=fast.src)
    assert set(vars(fast)) == {f.name for f in fields(Rule)}
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    assert fast.src.doc is doc and fast.src.path == ("rules", 1)
    everywhere = _rule(doc, ("rules", 0), {"number": 1, "action": "allow", "traffic": "ingress", "protocol": "all"})
    assert everywhere.cidrs == ("0.0.0.0/0",) and everywhere.ports is None
