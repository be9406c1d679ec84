"""check-db: test an LMDB of Datums (a copied data set, say) before a long run."""
from .registry import command, flag


@command("check-db", "read every page and record of an LMDB of Datums and report damaged "
                     "pages, records that do not decode, and records of another size")
def check_db_cmd(args):
    import logging
    from ..data.check_db import check_db, format_report
    from ..errors import CaffeLiteError
    if args.limit < 0:
        raise CaffeLiteError(f"-limit must be >= 0, got {args.limit}")
    log = logging.getLogger("caffe_lite")

    def progress(report):
        log.info("Checked %d records.", report.records)
    report = check_db(args.db, liblmdb=not args.no_liblmdb, on_progress=progress)
    for line in format_report(report, args.limit):
        print(line)
    return 0 if report.ok else 1


def _configure(p):
    p.add_argument("db", metavar="DB", help="LMDB directory (holding data.mdb)")
    flag(p, "limit", type=int, default=20, help="list at most this many bad records and pages")
    flag(p, "no_liblmdb", action="store_true",
         help="skip the final read through liblmdb (in a child process)")


check_db_cmd.configure = _configure
