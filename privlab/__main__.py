from privlab.cli import main

main()
