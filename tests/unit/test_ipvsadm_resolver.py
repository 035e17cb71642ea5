"""The real resolver behaves as the C library ipvsadm links against (not as Python's socket module)."""
import io

from lvsuser.backends.table import TableBackend
from lvsuser.control import ipvsadm
from lvsuser.control.ipvsadm.resolver import Resolver


def run(argv, backend):
    out, err = io.StringIO(), io.StringIO()
    rc = ipvsadm.main(argv, backend=backend, stdout=out, stderr=err, resolver=Resolver())
    return rc, out.getvalue(), err.getvalue()


def test_empty_host_does_not_resolve():
    assert Resolver().host_to_addr("") is None


def test_service_with_empty_host_is_refused_like_ipvsadm():
    # Captured on kernel IPVS: `ipvsadm -A -t :80` -> exit 2, "illegal virtual server address".
    backend = TableBackend()
    rc, out, err = run(["-A", "-t", ":80"], backend)
    assert (rc, out) == (2, "")
    assert err == "illegal virtual server address[:port] specified\n"
    assert backend.get_services() == []
