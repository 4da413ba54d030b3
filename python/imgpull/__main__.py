from imgpull.cli import main

main()
