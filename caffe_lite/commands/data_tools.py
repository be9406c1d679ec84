"""Dataset tools with Caffe's arguments and flags: convert-mnist (convert_mnist_data),
convert-imageset (convert_imageset) and compute-mean (compute_image_mean)."""
from .outputs import check_outputs
from .registry import command, flag


@command("convert-mnist", "convert MNIST idx files (gzipped or not) to an LMDB of Datums "
                          "(Caffe's convert_mnist_data)")
def convert_mnist_cmd(args):
    from ..data.convert import convert_mnist
    check_outputs([("OUT_DB", args.out_db)], kind="database")
    n = convert_mnist(args.images, args.labels, args.out_db, backend=args.backend)
    print(f"wrote {n} items to {args.out_db}")


convert_mnist_cmd.configure = lambda p: (
    p.add_argument("images", metavar="IMAGES", help="idx3 images file (e.g. "
                   "train-images-idx3-ubyte[.gz])"),
    p.add_argument("labels", metavar="LABELS", help="idx1 labels file"),
    p.add_argument("out_db", metavar="OUT_DB", help="LMDB directory to create (must not exist)"),
    flag(p, "backend", default="lmdb", help="database backend (only lmdb is supported)"))


@command("convert-imageset", "convert a list of images ('path label' lines) to an LMDB of "
                             "Datums (Caffe's convert_imageset)")
def convert_imageset_cmd(args):
    from ..data.convert import convert_imageset
    check_outputs([("DB_NAME", args.out_db)], kind="database")
    if args.seed is not None:
        from ..backend.state import set_random_seed
        set_random_seed(args.seed)
    n, skipped = convert_imageset(
        args.root, args.listfile, args.out_db, resize_height=args.resize_height,
        resize_width=args.resize_width, shuffle=args.shuffle, gray=args.gray,
        encoded=args.encoded, encode_type=args.encode_type, check_size=args.check_size,
        backend=args.backend, skip_bad_images=args.skip_bad_images)
    extra = f" ({skipped} unreadable images skipped)" if skipped else ""
    print(f"wrote {n} images to {args.out_db}{extra}")


def _configure_imageset(p):
    p.add_argument("root", metavar="ROOTFOLDER/", help="folder the list's paths are relative to")
    p.add_argument("listfile", metavar="LISTFILE", help="text file of 'path label' lines")
    p.add_argument("out_db", metavar="DB_NAME", help="LMDB directory to create (must not exist)")
    flag(p, "gray", action="store_true", help="treat images as grayscale ones")
    flag(p, "shuffle", action="store_true", help="randomly shuffle the order of images and "
         "their labels")
    flag(p, "backend", default="lmdb", help="database backend (only lmdb is supported)")
    flag(p, "resize_width", type=int, default=0, help="width images are resized to (with "
         "-resize_height)")
    flag(p, "resize_height", type=int, default=0, help="height images are resized to (with "
         "-resize_width)")
    flag(p, "check_size", action="store_true", help="check that all the datums have the same "
         "size")
    flag(p, "encoded", action="store_true", help="store the encoded image in the datum")
    flag(p, "encode_type", default="", help="encode images as this type ('png', 'jpg', ...)")
    flag(p, "skip_bad_images", action="store_true", help="log and skip images that cannot be "
         "read (Caffe's behaviour) instead of stopping with an error")
    flag(p, "seed", type=int, default=None, help="random seed for -shuffle (caffe-lite's addition)")


convert_imageset_cmd.configure = _configure_imageset


@command("compute-mean", "compute the per-pixel mean of an LMDB of Datums as a binaryproto "
                         "(Caffe's compute_image_mean)")
def compute_mean_cmd(args):
    from ..data.convert import compute_mean
    check_outputs([("OUTPUT_FILE", args.out)], args.overwrite)
    mean = compute_mean(args.db, args.out, backend=args.backend, overwrite=args.overwrite)
    per_channel = mean.reshape(mean.shape[0], -1).mean(axis=1, dtype="float64")
    print("mean_value: " + " ".join(f"{v:.6g}" for v in per_channel))
    if args.out:
        print(f"wrote {args.out} ({'x'.join(map(str, (1,) + mean.shape))})")


compute_mean_cmd.configure = lambda p: (
    p.add_argument("db", metavar="INPUT_DB", help="LMDB directory of Datums"),
    p.add_argument("out", metavar="OUTPUT_FILE", nargs="?", default=None,
                   help="binaryproto to write (must not exist unless -overwrite); without it, "
                        "only the per-channel means are printed"),
    flag(p, "backend", default="lmdb", help="database backend (only lmdb is supported)"),
    flag(p, "overwrite", action="store_true", help="replace an existing OUTPUT_FILE"))
