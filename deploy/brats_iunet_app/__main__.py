import logging
import sys

if __package__:
    from .app import BratsSegmentationApp
else:  # python deploy/brats_iunet_app: the folder is on sys.path
    from app import BratsSegmentationApp

if __name__ == "__main__":
    try:
        BratsSegmentationApp().run()  # the SDK sets up logging from -l / its logging.json
    except Exception as error:  # the report in the output folder has the details
        logging.getLogger("brats_iunet_app").error("%s", error)
        sys.exit(1)
