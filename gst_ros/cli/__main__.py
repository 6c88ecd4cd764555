import sys

from gst_ros.cli import main

sys.exit(main())
