from oned_images.cli import main

main()
