"""Turn a folder of captioned images into webdataset shards: ``python -m ldm.data.make_shards``.

python scripts/make_shards.py --images photos/ --out data/photos/ --samples-per-shard 10000
"""

from ldm.data.make_shards import main

if __name__ == "__main__":
    main()
